//! What the record crate's integration tests share.

use oomtrace_record::json_schema;

/// Today's schema, compiled by a validator from the field (boon).
pub fn compiled() -> (boon::Schemas, boon::SchemaIndex) {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("oomtrace.json", json_schema())
        .expect("the schema is a resource");
    let index = compiler
        .compile("oomtrace.json", &mut schemas)
        .expect("the schema compiles");
    (schemas, index)
}
