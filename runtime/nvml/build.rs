fn main() {
    // NVML's soname: dlopen("libnvidia-ml.so.1") by pynvml and go-nvml finds this library.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    // Never unmapped by dlclose (go-nvml closes it on Shutdown): the event thread and the
    // handles callers still hold stay valid.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
