//! `oomtrace schema`: the JSON Schema of the output, generated from the very
//! types the collector serialises.

pub fn schema() -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::schema::json_schema())?
    );
    Ok(())
}
