//! Arbitrary bytes as a manifest file: parse, translate, compile, look up. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::model::Model;
use portico::routing::{compile, normalize_request_host, CompileOptions};
use portico::translate::{parse_documents, Document};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut model = Model::default();
    for doc in parse_documents(text) {
        if let Document::Object(o) = doc {
            model.insert(o);
        }
    }
    let compiled = compile(&model, &CompileOptions::default());
    for r in compiled.table.routes() {
        let _ = compiled.pools.get(r.pool).map(|p| p.select());
    }
    let _ = compiled.table.lookup(&normalize_request_host(text), text);
});
