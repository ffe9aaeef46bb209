//! The output contract, checked on every line the collector writes in every
//! test: it validates against the JSON Schema `oomtrace schema` prints
//! (compiled by a validator from the field, boon), and it reads back
//! through the record crate users read it with, as a known record type.

use std::sync::OnceLock;

use serde_json::Value;

struct Compiled {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler
            .add_resource("oomtrace.json", oomtrace_record::json_schema())
            .expect("the schema is a resource");
        let index = compiler
            .compile("oomtrace.json", &mut schemas)
            .expect("the schema compiles");
        Compiled { schemas, index }
    })
}

/// Panics, naming the line, unless it keeps the contract.
pub fn assert_record(line: &str, value: &Value) {
    let compiled = compiled();
    if let Err(error) = compiled.schemas.validate(value, compiled.index) {
        panic!("a line that does not validate against the schema: {error:#}\n{line}");
    }
    match oomtrace_record::read::parse_line(line) {
        Ok(oomtrace_record::Record::Unknown) => {
            panic!("a record type the record crate does not know: {line}")
        }
        Ok(_) => {}
        Err(error) => panic!("a line the record crate cannot read ({error}): {line}"),
    }
}
