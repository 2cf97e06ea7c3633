//! Read the tensors of a `torch.save` zip archive without Python: a pickle
//! machine for the opcodes `torch.save` emits (protocols 2 to 5) that
//! rebuilds only what a state dict needs (dicts, lists, tuples, scalars,
//! tensors over their storages) and keeps instances of every other class
//! (a yacs `CfgNode`, a scheduler, apex's scaler) as opaque objects, so a
//! checkpoint that pickles its training config still yields its weights.
//! Nothing is imported or executed: a global is only a name.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::Tensor;

/// A decoded pickle value.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int (bigger ones than 64 bits are an error).
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A global name (module, name), not resolved.
    Global(String, String),
    /// An instance of a class this reader does not rebuild; dict items set
    /// on it are kept (a yacs `CfgNode` is a dict subclass).
    Object {
        /// The class or callable.
        class: Box<Value>,
        /// Items set on it.
        items: Vec<(Value, Value)>,
    },
    /// A typed storage: class name (`FloatStorage`, …) and its file key.
    Storage(String, String),
    /// A tensor view over a storage.
    Tensor(TensorRef),
    /// The stack marker (never in a finished value).
    Mark,
}

/// Where a tensor's elements are: a strided view over a storage file.
#[derive(Debug, Clone)]
pub struct TensorRef {
    /// Storage class name.
    pub class: String,
    /// Storage file key (`data/KEY` in the archive).
    pub key: String,
    /// Offset in elements.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides in elements.
    pub stride: Vec<i64>,
}

impl Value {
    /// The value for `key` when this is a dict (or a dict-like object).
    pub fn get(&self, key: &str) -> Option<&Value> {
        let items = match self {
            Value::Dict(items) | Value::Object { items, .. } => items,
            _ => return None,
        };
        items
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

fn err(msg: impl Into<String>) -> String {
    msg.into()
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| err("pickle ends in the middle of an opcode"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| err("unterminated text line in pickle"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn str_of(&mut self, n: usize) -> Result<String, String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| err("a pickled str is not UTF-8"))
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| err("pickle stack underflow"))
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| err("pickle stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| err("pickle has no mark to pop to"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    /// Store a copy of the top of the stack under memo key `i`.
    fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }
    /// Push the value stored under memo key `i`.
    fn memo_get(&mut self, i: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(&i)
            .cloned()
            .ok_or_else(|| err("pickle refers to an unknown memo entry"))?;
        self.stack.push(v);
        Ok(())
    }
    fn set_items(&mut self, pairs: Vec<Value>) -> Result<(), String> {
        if pairs.len() % 2 != 0 {
            return Err(err("odd number of dict items in pickle"));
        }
        let mut it = pairs.into_iter();
        let mut kv = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            kv.push((k, v));
        }
        match self.top()? {
            Value::Dict(items) | Value::Object { items, .. } => items.extend(kv),
            // Items set on something else (a tensor subclass' state): not needed.
            _ => {}
        }
        Ok(())
    }
    fn append(&mut self, values: Vec<Value>) -> Result<(), String> {
        if let Value::List(l) = self.top()? {
            l.extend(values);
        }
        Ok(())
    }

    fn reduce(callable: Value, args: Value) -> Result<Value, String> {
        let Value::Global(module, name) = &callable else {
            return Ok(Value::Object {
                class: Box::new(callable),
                items: Vec::new(),
            });
        };
        let args = match args {
            Value::Tuple(a) => a,
            other => vec![other],
        };
        Ok(match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => match args.into_iter().next() {
                Some(Value::List(pairs)) => Value::Dict(
                    pairs
                        .into_iter()
                        .filter_map(|p| match p {
                            Value::Tuple(mut kv) if kv.len() == 2 => {
                                let v = kv.pop()?;
                                let k = kv.pop()?;
                                Some((k, v))
                            }
                            _ => None,
                        })
                        .collect(),
                ),
                _ => Value::Dict(Vec::new()),
            },
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let mut a = args.into_iter();
                let (storage, offset, size, stride) = (a.next(), a.next(), a.next(), a.next());
                let Some(Value::Storage(class, key)) = storage else {
                    return Err(err("a tensor in the pickle has no storage"));
                };
                let ints = |v: Option<Value>| -> Result<Vec<i64>, String> {
                    match v {
                        Some(Value::Tuple(xs)) | Some(Value::List(xs)) => xs
                            .into_iter()
                            .map(|x| match x {
                                Value::Int(i) => Ok(i),
                                _ => Err(err("a tensor's size or stride is not an int")),
                            })
                            .collect(),
                        _ => Err(err("a tensor has no size or stride tuple")),
                    }
                };
                let offset = match offset {
                    Some(Value::Int(o)) => o,
                    _ => return Err(err("a tensor's storage offset is not an int")),
                };
                Value::Tensor(TensorRef {
                    class,
                    key,
                    offset,
                    size: ints(size)?,
                    stride: ints(stride)?,
                })
            }
            // nn.Parameter(data, requires_grad, hooks): the data is the tensor.
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                args.into_iter().next().unwrap_or(Value::None)
            }
            _ => Value::Object {
                class: Box::new(callable),
                items: Vec::new(),
            },
        })
    }

    fn persistent(pid: Value) -> Result<Value, String> {
        // ('storage', StorageClass, key, location, numel)
        let Value::Tuple(t) = pid else {
            return Err(err("a persistent id is not a tuple"));
        };
        match t.as_slice() {
            [Value::Str(kind), Value::Global(_, class), Value::Str(key), ..]
                if kind == "storage" =>
            {
                Ok(Value::Storage(class.clone(), key.clone()))
            }
            _ => Err(err("a persistent id is not a torch storage")),
        }
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(err("an int in the pickle is wider than 64 bits"));
                    }
                    let mut a = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    a[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(a)))
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.str_of(n)?;
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.str_of(n)?;
                    self.stack.push(Value::Str(s))
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let s = self.str_of(n)?;
                    self.stack.push(Value::Str(s))
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                0x8e => {
                    let n = self.u64()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(err("pickle stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                0x8f => self.stack.push(Value::List(Vec::new())), // EMPTY_SET
                0x90 => {
                    let items = self.pop_mark()?; // ADDITEMS
                    self.append(items)?
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.stack.push(Value::List(items))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?; // STACK_GLOBAL
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(err("STACK_GLOBAL without two strs")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(Self::reduce(callable, args)?)
                }
                0x81 => {
                    let _args = self.pop()?; // NEWOBJ
                    let cls = self.pop()?;
                    self.stack.push(Value::Object {
                        class: Box::new(cls),
                        items: Vec::new(),
                    })
                }
                0x92 => {
                    let _kwargs = self.pop()?; // NEWOBJ_EX
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Value::Object {
                        class: Box::new(cls),
                        items: Vec::new(),
                    })
                }
                b'b' => {
                    // BUILD: an object's __dict__/__setstate__ state; the
                    // state of unknown classes is not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Self::persistent(pid)?)
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32; // MEMOIZE
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                b'1' => {
                    self.pop_mark()?;
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {} is not one torch.save writes",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

/// Decode a pickle. Memo entries are copies taken when stored, so an object
/// that the pickle mutates after memoising it and refers to again shows its
/// earlier contents; tensors and state dicts are not pickled that way.
pub fn unpickle(data: &[u8]) -> Result<Value, String> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

/// A `torch.save` archive: its decoded `data.pkl` and access to its storages.
pub struct Archive {
    zip: zip::ZipArchive<std::io::BufReader<std::fs::File>>,
    prefix: String,
    /// The pickled object.
    pub root: Value,
}

impl Archive {
    /// Open `path` and decode its pickle.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
            format!("{e} (not a torch.save zip archive; files from torch < 1.6 are not read: load and re-save them with a newer torch)")
        })?;
        let pkl = (0..zip.len())
            .filter_map(|i| zip.name_for_index(i).map(str::to_string))
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .ok_or_else(|| err("the archive has no data.pkl"))?;
        let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
        let mut bytes = Vec::new();
        zip.by_name(&pkl)
            .map_err(|e| e.to_string())?
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        let root = unpickle(&bytes)?;
        Ok(Archive { zip, prefix, root })
    }

    /// Materialise a tensor: its storage read, viewed with its strides, made contiguous.
    pub fn tensor(&mut self, t: &TensorRef) -> Result<Tensor, String> {
        let (kind, elem) = super::kind_of_storage(&t.class)
            .ok_or_else(|| format!("storage class {} is not supported", t.class))?;
        let mut bytes = Vec::new();
        self.zip
            .by_name(&format!("{}data/{}", self.prefix, t.key))
            .map_err(|e| format!("storage {}: {e}", t.key))?
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        let numel = (bytes.len() / elem) as i64;
        // The furthest element the view touches must lie inside the storage.
        let reach = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&n, &s)| {
                if n == 0 {
                    None
                } else {
                    Some(acc + (n - 1) * s)
                }
            });
        if t.size.len() != t.stride.len()
            || t.offset < 0
            || t.stride.iter().any(|&s| s < 0)
            || reach.is_some_and(|r| r >= numel)
        {
            return Err(format!(
                "tensor over storage {} reaches past its {numel} elements",
                t.key
            ));
        }
        let flat = Tensor::from_data_size(&bytes, &[numel], kind);
        Ok(flat.as_strided(&t.size, &t.stride, t.offset).contiguous())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_classes_keep_their_dict_items() {
        // {'config': CfgNode({'A': 1}) via NEWOBJ + SETITEMS + BUILD, 'n': 2}
        let mut p = vec![0x80, 2, b'}', b'('];
        p.extend(b"X\x06\x00\x00\x00config");
        p.extend(b"cyacs.config\nCfgNode\n");
        p.extend(b")\x81(X\x01\x00\x00\x00AK\x01u}b");
        p.extend(b"X\x01\x00\x00\x00nK\x02u.");
        let v = unpickle(&p).unwrap();
        let cfg = v.get("config").unwrap();
        assert!(matches!(cfg.get("A"), Some(Value::Int(1))), "{cfg:?}");
        assert!(matches!(v.get("n"), Some(Value::Int(2))));
    }

    #[test]
    fn truncated_and_foreign_pickles_are_errors_not_panics() {
        assert!(unpickle(&[0x80, 2, b'X', 9, 0]).is_err());
        assert!(unpickle(&[0x80, 2, b'u']).is_err());
        assert!(unpickle(&[0x80, 2, b'I']).is_err());
        assert!(unpickle(&[]).is_err());
    }

    #[test]
    fn long1_decodes_negative_and_short_forms() {
        let v = unpickle(&[0x8a, 2, 0xff, 0x7f, b'.']).unwrap();
        assert!(matches!(v, Value::Int(32767)));
        let v = unpickle(&[0x8a, 1, 0xff, b'.']).unwrap();
        assert!(matches!(v, Value::Int(-1)));
    }
}
