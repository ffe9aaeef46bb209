//! `oomtrace schema`: the JSON Schema of the output, generated from the very
//! types the collector serialises (the `oomtrace-record` crate).

pub fn schema() -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&oomtrace_record::json_schema())?
    );
    Ok(())
}
