{
  "targets": [
    {
      "target_name": "strata_native",
      "sources": ["strata_native.c", "low_memory.cc"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall"],
      "cflags_c": ["-std=gnu11"],
      "cflags_cc": ["-std=gnu++17"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags_c!": ["-O3"]
        }
      }
    }
  ]
}
