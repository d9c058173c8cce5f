{
  "targets": [
    {
      "target_name": "strata_native",
      "sources": ["strata_native.c"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-std=gnu11"],
      "cflags_c": ["-std=gnu11"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags_c!": ["-O3"]
        }
      }
    }
  ]
}
