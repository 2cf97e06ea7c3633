//! Link flags that `tch`'s own build script cannot pass on to our binaries.
//!
//! * an rpath to the libtorch `lib/` directory, so binaries and tests find
//!   libtorch at run time without `LD_LIBRARY_PATH`;
//! * `--no-as-needed` around `torch_cuda`: nothing references its symbols
//!   directly, so an as-needed linker drops it and CUDA silently becomes
//!   unavailable.
//!
//! It also compiles the C shim for region decoding of JPEGs
//! (`csrc/jpeg_region.c`) against libjpeg-turbo, linked statically so
//! binaries copied to other machines need no libjpeg there, and the C++ shim
//! that reads the CUDA caching allocator's statistics (`csrc/cuda_memory.cpp`)
//! against libtorch's headers.
use std::path::Path;

fn main() {
    build_jpeg_shim();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; no rpath set");
        return;
    };
    build_cuda_memory_shim(Path::new(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-search=native={lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// Compile the JPEG region shim and link libjpeg-turbo statically, from
/// `RIDE_LIBJPEG_DIR` (a directory holding `libjpeg.a`) or the system's
/// multiarch library directory.
fn build_jpeg_shim() {
    println!("cargo:rerun-if-changed=csrc/jpeg_region.c");
    println!("cargo:rerun-if-env-changed=RIDE_LIBJPEG_DIR");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let lib_dir =
        std::env::var("RIDE_LIBJPEG_DIR").unwrap_or_else(|_| format!("/usr/lib/{arch}-linux-gnu"));
    if !Path::new(&lib_dir).join("libjpeg.a").exists() {
        panic!(
            "libjpeg.a not found in {lib_dir}: install libjpeg-turbo's development files \
             (Debian: apt-get install libjpeg62-turbo-dev) or set RIDE_LIBJPEG_DIR"
        );
    }
    cc::Build::new()
        .file("csrc/jpeg_region.c")
        .opt_level(2)
        .compile("ride_jpeg_region");
    println!("cargo:rustc-link-search=native={lib_dir}");
    println!("cargo:rustc-link-lib=static=jpeg");
}

/// Compile the allocator-statistics shim against the headers next to
/// libtorch's `lib/` (`include/`, as in the PyPI wheel and the zip).
fn build_cuda_memory_shim(lib: &Path) {
    println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    if !include.join("c10/core/CachingDeviceAllocator.h").exists() {
        panic!(
            "libtorch headers not found in {}: the libtorch in use lacks c10/core/CachingDeviceAllocator.h (torch >= 2.9 has it)",
            include.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        .file("csrc/cuda_memory.cpp")
        .include(&include)
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2)
        .compile("ride_cuda_memory");
}
