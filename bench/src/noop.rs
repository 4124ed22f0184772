//! A proxy-wasm module that does nothing: every request passes untouched. Envoy running it shows
//! the fixed cost of a wasm filter (V8 entry and exit, context creation) with no Tollgate code.
//!
//! It is encoded here byte by byte (a few hundred bytes, no toolchain needed): one page of memory,
//! the ABI version marker, an allocator that always answers the same scratch address (the host
//! only writes the small VM and plugin configurations through it), and the callbacks a host needs to
//! start the VM, configure it and run a request's headers.

const I32: u8 = 0x7f;

/// Function types, by index.
const TYPES: [(&[u8], &[u8]); 5] = [
    (&[I32], &[I32]),           // 0: (i32) -> i32
    (&[I32, I32], &[]),         // 1: (i32, i32)
    (&[I32, I32], &[I32]),      // 2: (i32, i32) -> i32
    (&[I32, I32, I32], &[I32]), // 3: (i32, i32, i32) -> i32
    (&[], &[]),                 // 4: ()
];

/// Where the allocator puts everything (the host copies configuration strings there).
const SCRATCH: u32 = 1024;

/// (export name, type index, constant returned or `None` for no result)
const FUNCTIONS: [(&str, u8, Option<u32>); 6] = [
    ("proxy_abi_version_0_2_1", 4, None),
    ("proxy_on_memory_allocate", 0, Some(SCRATCH)),
    ("proxy_on_context_create", 1, None),
    ("proxy_on_vm_start", 2, Some(1)),
    ("proxy_on_configure", 2, Some(1)),
    // 0 = Continue.
    ("proxy_on_request_headers", 3, Some(0)),
];

/// The module's bytes.
pub fn module() -> Vec<u8> {
    let mut out = b"\0asm".to_vec();
    out.extend_from_slice(&[1, 0, 0, 0]);

    let mut types = leb(TYPES.len() as u32);
    for (params, results) in TYPES {
        types.push(0x60);
        types.extend(leb(params.len() as u32));
        types.extend_from_slice(params);
        types.extend(leb(results.len() as u32));
        types.extend_from_slice(results);
    }
    section(&mut out, 1, &types);

    let mut funcs = leb(FUNCTIONS.len() as u32);
    funcs.extend(FUNCTIONS.iter().map(|(_, ty, _)| *ty));
    section(&mut out, 3, &funcs);

    // One memory: min 1 page, no max.
    section(&mut out, 5, &[1, 0, 1]);

    let mut exports = leb(FUNCTIONS.len() as u32 + 1);
    exports.extend(name("memory"));
    exports.extend([2, 0]);
    for (index, (export, _, _)) in FUNCTIONS.iter().enumerate() {
        exports.extend(name(export));
        exports.push(0);
        exports.extend(leb(index as u32));
    }
    section(&mut out, 7, &exports);

    let mut code = leb(FUNCTIONS.len() as u32);
    for (_, _, result) in FUNCTIONS {
        let mut body = vec![0]; // no locals
        if let Some(value) = result {
            body.push(0x41); // i32.const
            body.extend(sleb(value));
        }
        body.push(0x0b); // end
        code.extend(leb(body.len() as u32));
        code.extend(body);
    }
    section(&mut out, 10, &code);
    out
}

fn section(out: &mut Vec<u8>, id: u8, content: &[u8]) {
    out.push(id);
    out.extend(leb(content.len() as u32));
    out.extend_from_slice(content);
}

fn name(text: &str) -> Vec<u8> {
    let mut out = leb(text.len() as u32);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Unsigned LEB128.
fn leb(mut value: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Signed LEB128 of a non-negative value (i32.const takes a signed immediate).
fn sleb(value: u32) -> Vec<u8> {
    let mut value = i64::from(value);
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::{Parser, Payload};

    #[test]
    fn leb128_encodings() {
        assert_eq!(leb(0), [0]);
        assert_eq!(leb(624_485), [0xe5, 0x8e, 0x26]);
        assert_eq!(sleb(1), [1]);
        // 64 and 1024 need a second byte so the sign bit stays clear.
        assert_eq!(sleb(64), [0xc0, 0x00]);
        assert_eq!(sleb(1024), [0x80, 0x08]);
    }

    #[test]
    fn the_module_parses_and_exports_the_proxy_wasm_entry_points() {
        let bytes = module();
        let mut exports = Vec::new();
        let mut bodies = 0;
        for payload in Parser::new(0).parse_all(&bytes) {
            match payload.unwrap() {
                Payload::ExportSection(reader) => {
                    for export in reader {
                        exports.push(export.unwrap().name.to_owned());
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().unwrap();
                    while !ops.eof() {
                        ops.read().unwrap();
                    }
                    bodies += 1;
                }
                Payload::ImportSection(_) => panic!("the module imports nothing"),
                _ => {}
            }
        }
        assert_eq!(bodies, FUNCTIONS.len());
        for expected in
            ["memory", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "proxy_on_request_headers"]
        {
            assert!(exports.iter().any(|e| e == expected), "missing export {expected}: {exports:?}");
        }
    }
}
