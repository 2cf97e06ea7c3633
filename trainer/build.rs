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
//! binaries copied to other machines need no libjpeg there, and the C++
//! shims over libtorch that tch does not bind, against libtorch's headers:
//! the CUDA caching allocator's statistics (`csrc/cuda_memory.cpp`), and
//! autocast with an explicit dtype, the fused AdamW kernel and foreach
//! gradient clipping (`csrc/amp.cpp`), and post-accumulate-grad hooks for
//! all-reduce overlapped with backward (`csrc/grad_ready.cpp`).
use std::path::Path;

fn main() {
    build_jpeg_shim();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; no rpath set");
        return;
    };
    build_torch_shims(Path::new(&lib));
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

/// Compile the C++ shims against the headers next to libtorch's `lib/`
/// (`include/`, as in the PyPI wheel and the zip), with the C++11 ABI the
/// torch 2.x wheels use (`LIBTORCH_CXX11_ABI=0` for an old-ABI libtorch).
fn build_torch_shims(lib: &Path) {
    println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
    println!("cargo:rerun-if-changed=csrc/amp.cpp");
    println!("cargo:rerun-if-changed=csrc/grad_ready.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
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
        .file("csrc/amp.cpp")
        .file("csrc/grad_ready.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2)
        .compile("ride_torch_shims");
    // The shims call into libtorch_cpu; name it after the static archive.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
