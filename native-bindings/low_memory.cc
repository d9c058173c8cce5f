// The one V8 call the addon makes: Isolate::LowMemoryNotification, which collects every object it
// can and gives the freed pages back to the system at once (what V8's own memory reducer does some
// seconds after an allocation burst, and only sometimes). N-API has no such call. The daemon makes it
// when it goes idle after a burst of requests (see idleCollector in src/cli/mount.ts).
#include <v8.h>

extern "C" void strata_low_memory_notification(void) {
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  if (isolate) isolate->LowMemoryNotification();
}
