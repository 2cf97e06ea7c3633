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
//! binaries copied to other machines need no libjpeg there.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=csrc/jpeg_region.c");
    cc::Build::new()
        .file("csrc/jpeg_region.c")
        .opt_level(2)
        .compile("ride_jpeg_region");
    println!("cargo:rustc-link-lib=static=jpeg");
    println!("cargo:rustc-link-search=native=/usr/lib/x86_64-linux-gnu");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-search=native={lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
