//! PyTorch's `torch.save` files, read and written natively: the authors'
//! checkpoints in, trained weights back out in their layout.

pub mod read;
pub mod write;

use tch::Kind;

/// PyTorch's typed storage classes: name, element type, bytes per element.
const STORAGES: &[(&str, Kind, usize)] = &[
    ("FloatStorage", Kind::Float, 4),
    ("DoubleStorage", Kind::Double, 8),
    ("HalfStorage", Kind::Half, 2),
    ("BFloat16Storage", Kind::BFloat16, 2),
    ("LongStorage", Kind::Int64, 8),
    ("IntStorage", Kind::Int, 4),
    ("ShortStorage", Kind::Int16, 2),
    ("CharStorage", Kind::Int8, 1),
    ("ByteStorage", Kind::Uint8, 1),
    ("BoolStorage", Kind::Bool, 1),
];

/// The element type and size of a storage class.
fn kind_of_storage(class: &str) -> Option<(Kind, usize)> {
    STORAGES.iter().find(|s| s.0 == class).map(|s| (s.1, s.2))
}

/// The storage class that holds `kind`, and its element size.
fn storage_of_kind(kind: Kind) -> Option<(&'static str, usize)> {
    STORAGES.iter().find(|s| s.1 == kind).map(|s| (s.0, s.2))
}
