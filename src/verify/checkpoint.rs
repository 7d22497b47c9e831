//! TEMPORARY placeholder (replaced by the real module before commit).
#[derive(Debug)]
pub struct ParsedCheckpoint;
pub fn verify_checkpoint(_note: &str, _key_name: &str, _spki: &[u8]) -> Result<ParsedCheckpoint, String> {
    Ok(ParsedCheckpoint)
}
