//! Event payloads to bytes and back: the only file that names bincode.
//!
//! bincode cannot decode what needs `deserialize_any`: internally tagged enums (the
//! contract's `"type"` tag) and `serde_json::Value`. So the stored form is a mirror,
//! [`Wire`]: the same variants and fields in the same order, externally tagged (bincode
//! writes the variant index), with every `serde_json::Value` stored as its JSON text.
//! serde_json's `float_roundtrip` feature makes floats inside that text come back bit
//! for bit; `score: Option<f64>` is stored as raw IEEE-754 bits by bincode itself.
//!
//! Invariants:
//! - The variant order of [`Wire`] and the field order inside each variant are part of
//!   the on-disk format (docs/FORMAT.md, version [`CODEC_VERSION`]); append, never
//!   reorder. The golden-file test fails if they change.
//! - Decoding never allocates more than the input's length: bincode runs with a byte
//!   limit equal to the body size, so a forged string length is refused before any
//!   allocation.

use bincode::Options as _;
use serde::{Deserialize, Serialize};

use crate::event::{ExecutionError, ExecutionEventData, ParentLink, StepSourceType, StepType};
use crate::ids::StepId;

/// Version of the payload encoding; part of the segment header's format version.
pub(crate) const CODEC_VERSION: u32 = 3;

/// Deepest `serde_json::Value` nesting accepted; serde_json refuses to parse deeper
/// text (its recursion limit is 128), so deeper values are rejected at append time
/// instead of becoming unreadable.
pub(crate) const MAX_JSON_DEPTH: usize = 100;

/// The owner of an execution, written once in the execution's first record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Declaration {
    pub(crate) execution_id: String,
    pub(crate) tenant_id: String,
}

fn options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_varint_encoding()
}

/// Appends the encoded event to `out`.
///
/// Fails only for a `serde_json::Value` nested deeper than [`MAX_JSON_DEPTH`].
pub(crate) fn encode_event(event: ExecutionEventData, out: &mut Vec<u8>) -> Result<(), String> {
    let wire = Wire::try_from(event)?;
    options()
        .serialize_into(out, &wire)
        .map_err(|e| format!("cannot encode event: {e}"))
}

/// What precedes the event in a record body: the execution's declaration (in its
/// first record) and the idempotency key (in the first record of a keyed append).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Prefix {
    pub(crate) declaration: Option<Declaration>,
    pub(crate) key: Option<String>,
}

/// The stored form of [`Prefix`]. Variants 0 and 1 encode byte for byte as format
/// version 1's `Option<Declaration>` (bincode writes the variant index as a varint, and
/// an `Option`'s tag as one byte: `00`, `01`); variant 2 is format version 2's.
#[derive(Serialize, Deserialize)]
enum WirePrefix<D, K> {
    Plain,
    Declared(D),
    Keyed { declaration: Option<D>, key: K },
}

/// Appends the encoded prefix to `out` (the first part of a record body).
pub(crate) fn encode_prefix(
    declaration: Option<&Declaration>,
    key: Option<&str>,
    out: &mut Vec<u8>,
) {
    let wire = match (declaration, key) {
        (None, None) => WirePrefix::Plain,
        (Some(d), None) => WirePrefix::Declared(d),
        (declaration, Some(key)) => WirePrefix::Keyed { declaration, key },
    };
    // Serializing strings and an enum into a Vec cannot fail.
    let result = options().serialize_into(out, &wire);
    debug_assert!(result.is_ok());
}

/// Appends the encoded optional declaration to `out`: a prefix without a key.
pub(crate) fn encode_declaration(declaration: Option<&Declaration>, out: &mut Vec<u8>) {
    encode_prefix(declaration, None, out);
}

/// Decodes a record body: the prefix's declaration followed by the event.
///
/// Any malformed input, trailing bytes included, is an `Err` with a reason.
pub(crate) fn decode_body(
    body: &[u8],
) -> Result<(Option<Declaration>, ExecutionEventData), String> {
    let (prefix, event) = split_body(body)?;
    Ok((prefix.declaration, decode_event(event)?))
}

/// Splits a record body into its decoded prefix and the event's bytes, as
/// [`encode_event`] wrote them (what an idempotent retry is compared with).
pub(crate) fn split_body(body: &[u8]) -> Result<(Prefix, &[u8]), String> {
    let limit = u64::try_from(body.len()).unwrap_or(u64::MAX);
    let mut rest = body;
    let wire: WirePrefix<Declaration, String> = options()
        .with_limit(limit)
        .allow_trailing_bytes()
        .deserialize_from(&mut rest)
        .map_err(|e| format!("cannot decode record prefix: {e}"))?;
    let prefix = match wire {
        WirePrefix::Plain => Prefix::default(),
        WirePrefix::Declared(d) => Prefix {
            declaration: Some(d),
            key: None,
        },
        WirePrefix::Keyed { declaration, key } => {
            if key.is_empty() || key.len() > crate::guard::MAX_IDEMPOTENCY_KEY_BYTES {
                return Err(format!("idempotency key of {} bytes", key.len()));
            }
            Prefix {
                declaration,
                key: Some(key),
            }
        }
    };
    Ok((prefix, rest))
}

/// Decodes an event body without a prefix in front (the PostgreSQL backend's `body`
/// column holds exactly what [`encode_event`] wrote).
pub(crate) fn decode_event(body: &[u8]) -> Result<ExecutionEventData, String> {
    let limit = u64::try_from(body.len()).unwrap_or(u64::MAX);
    let wire: Wire = options()
        .with_limit(limit)
        .reject_trailing_bytes()
        .deserialize(body)
        .map_err(|e| format!("cannot decode event body: {e}"))?;
    ExecutionEventData::try_from(wire)
}

/// The prefix of the body of an event record with `sequence`, checked against where
/// the record is (docs/FORMAT.md): a declaration exactly in sequence 1, a key only in
/// the first record of a batch (`first_of_batch`) of a segment of format version 2 or
/// later. Decodes only when the first byte says the prefix holds something, so a
/// plain later record costs one compare (recovery runs this on every record).
#[inline]
pub(crate) fn record_prefix(
    body: &[u8],
    sequence: u64,
    first_of_batch: bool,
    segment_version: u32,
) -> Result<Prefix, String> {
    if sequence != 1 && body.first() == Some(&0) {
        return Ok(Prefix::default());
    }
    checked_prefix(body, sequence, first_of_batch, segment_version)
}

/// [`record_prefix`] of a record whose prefix holds something, out of line: inlined,
/// the plain case is a compare and no call (measured on the checkpoint's header walk).
#[inline(never)]
fn checked_prefix(
    body: &[u8],
    sequence: u64,
    first_of_batch: bool,
    segment_version: u32,
) -> Result<Prefix, String> {
    let prefix = decode_prefix(body)?;
    match (prefix.declaration.is_some(), sequence == 1) {
        (false, true) => return Err("first record of an execution has no declaration".into()),
        (true, false) => return Err(format!("declaration in sequence {sequence}")),
        _ => {}
    }
    if prefix.key.is_some() {
        if !first_of_batch {
            return Err("idempotency key inside a batch".into());
        }
        if segment_version < 2 {
            return Err(format!(
                "idempotency key in a segment of format version {segment_version}"
            ));
        }
    }
    Ok(prefix)
}

/// Decodes only the prefix at the start of a record body (recovery needs no more).
pub(crate) fn decode_prefix(body: &[u8]) -> Result<Prefix, String> {
    split_body(body).map(|(prefix, _)| prefix)
}

/// The stored mirror of [`ExecutionEventData`]. See the module docs.
#[derive(Serialize, Deserialize)]
enum Wire {
    ExecutionStarted {
        parent: Option<ParentLink>,
        metadata: Option<String>,
    },
    StepStarted {
        step_id: StepId,
        parent_step_id: Option<StepId>,
        step_type: StepType,
        name: String,
    },
    StepCompleted {
        step_id: StepId,
        output: Option<String>,
        duration_ms: u64,
    },
    StepFailed {
        step_id: StepId,
        error: ExecutionError,
    },
    ExecutionPaused {
        reason: String,
    },
    ExecutionResumed,
    ExecutionCompleted {
        output: Option<String>,
        duration_ms: u64,
    },
    ExecutionFailed {
        error: ExecutionError,
    },
    ExecutionCancelled {
        reason: String,
    },
    ArtifactStored {
        artifact_id: String,
        step_id: StepId,
        content_hash: String,
        size_bytes: u64,
    },
    StepDiscovered {
        step_id: StepId,
        discovered_by: Option<StepId>,
        source_type: StepSourceType,
        reason: String,
        depth: u32,
    },
    ToolCallStarted {
        step_id: Option<StepId>,
        tool_call_id: String,
        tool_name: String,
        input: String,
    },
    ToolCallCompleted {
        step_id: Option<StepId>,
        tool_call_id: String,
        output: String,
    },
    CheckpointSaved {
        step_id: Option<StepId>,
        checkpoint_id: String,
        state_hash: String,
    },
    GoalEvaluated {
        step_id: Option<StepId>,
        goal_id: String,
        status: String,
        score: Option<f64>,
        reason: Option<String>,
    },
    Custom {
        event_type: String,
        data: String,
    },
}

fn json_to_text(value: &serde_json::Value) -> Result<String, String> {
    let depth = json_depth(value);
    if depth > MAX_JSON_DEPTH {
        return Err(format!(
            "a JSON value is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
        ));
    }
    serde_json::to_string(value).map_err(|e| format!("cannot encode JSON value: {e}"))
}

fn text_to_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("stored JSON value does not parse: {e}"))
}

/// Nesting depth of a JSON value, computed without recursion.
fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            serde_json::Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

impl TryFrom<ExecutionEventData> for Wire {
    type Error = String;

    fn try_from(event: ExecutionEventData) -> Result<Self, String> {
        use ExecutionEventData as E;
        Ok(match event {
            E::ExecutionStarted { parent, metadata } => Wire::ExecutionStarted {
                parent,
                metadata: metadata.as_ref().map(json_to_text).transpose()?,
            },
            E::StepStarted {
                step_id,
                parent_step_id,
                step_type,
                name,
            } => Wire::StepStarted {
                step_id,
                parent_step_id,
                step_type,
                name,
            },
            E::StepCompleted {
                step_id,
                output,
                duration_ms,
            } => Wire::StepCompleted {
                step_id,
                output,
                duration_ms,
            },
            E::StepFailed { step_id, error } => Wire::StepFailed { step_id, error },
            E::ExecutionPaused { reason } => Wire::ExecutionPaused { reason },
            E::ExecutionResumed => Wire::ExecutionResumed,
            E::ExecutionCompleted {
                output,
                duration_ms,
            } => Wire::ExecutionCompleted {
                output,
                duration_ms,
            },
            E::ExecutionFailed { error } => Wire::ExecutionFailed { error },
            E::ExecutionCancelled { reason } => Wire::ExecutionCancelled { reason },
            E::ArtifactStored {
                artifact_id,
                step_id,
                content_hash,
                size_bytes,
            } => Wire::ArtifactStored {
                artifact_id,
                step_id,
                content_hash,
                size_bytes,
            },
            E::StepDiscovered {
                step_id,
                discovered_by,
                source_type,
                reason,
                depth,
            } => Wire::StepDiscovered {
                step_id,
                discovered_by,
                source_type,
                reason,
                depth,
            },
            E::ToolCallStarted {
                step_id,
                tool_call_id,
                tool_name,
                input,
            } => Wire::ToolCallStarted {
                step_id,
                tool_call_id,
                tool_name,
                input: json_to_text(&input)?,
            },
            E::ToolCallCompleted {
                step_id,
                tool_call_id,
                output,
            } => Wire::ToolCallCompleted {
                step_id,
                tool_call_id,
                output: json_to_text(&output)?,
            },
            E::CheckpointSaved {
                step_id,
                checkpoint_id,
                state_hash,
            } => Wire::CheckpointSaved {
                step_id,
                checkpoint_id,
                state_hash,
            },
            E::GoalEvaluated {
                step_id,
                goal_id,
                status,
                score,
                reason,
            } => Wire::GoalEvaluated {
                step_id,
                goal_id,
                status,
                score,
                reason,
            },
            E::Custom { event_type, data } => Wire::Custom {
                event_type,
                data: json_to_text(&data)?,
            },
        })
    }
}

impl TryFrom<Wire> for ExecutionEventData {
    type Error = String;

    fn try_from(wire: Wire) -> Result<Self, String> {
        use ExecutionEventData as E;
        Ok(match wire {
            Wire::ExecutionStarted { parent, metadata } => E::ExecutionStarted {
                parent,
                metadata: metadata.as_deref().map(text_to_json).transpose()?,
            },
            Wire::StepStarted {
                step_id,
                parent_step_id,
                step_type,
                name,
            } => E::StepStarted {
                step_id,
                parent_step_id,
                step_type,
                name,
            },
            Wire::StepCompleted {
                step_id,
                output,
                duration_ms,
            } => E::StepCompleted {
                step_id,
                output,
                duration_ms,
            },
            Wire::StepFailed { step_id, error } => E::StepFailed { step_id, error },
            Wire::ExecutionPaused { reason } => E::ExecutionPaused { reason },
            Wire::ExecutionResumed => E::ExecutionResumed,
            Wire::ExecutionCompleted {
                output,
                duration_ms,
            } => E::ExecutionCompleted {
                output,
                duration_ms,
            },
            Wire::ExecutionFailed { error } => E::ExecutionFailed { error },
            Wire::ExecutionCancelled { reason } => E::ExecutionCancelled { reason },
            Wire::ArtifactStored {
                artifact_id,
                step_id,
                content_hash,
                size_bytes,
            } => E::ArtifactStored {
                artifact_id,
                step_id,
                content_hash,
                size_bytes,
            },
            Wire::StepDiscovered {
                step_id,
                discovered_by,
                source_type,
                reason,
                depth,
            } => E::StepDiscovered {
                step_id,
                discovered_by,
                source_type,
                reason,
                depth,
            },
            Wire::ToolCallStarted {
                step_id,
                tool_call_id,
                tool_name,
                input,
            } => E::ToolCallStarted {
                step_id,
                tool_call_id,
                tool_name,
                input: text_to_json(&input)?,
            },
            Wire::ToolCallCompleted {
                step_id,
                tool_call_id,
                output,
            } => E::ToolCallCompleted {
                step_id,
                tool_call_id,
                output: text_to_json(&output)?,
            },
            Wire::CheckpointSaved {
                step_id,
                checkpoint_id,
                state_hash,
            } => E::CheckpointSaved {
                step_id,
                checkpoint_id,
                state_hash,
            },
            Wire::GoalEvaluated {
                step_id,
                goal_id,
                status,
                score,
                reason,
            } => E::GoalEvaluated {
                step_id,
                goal_id,
                status,
                score,
                reason,
            },
            Wire::Custom { event_type, data } => E::Custom {
                event_type,
                data: text_to_json(&data)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_string_length_is_refused_without_allocating() {
        // Declaration present (tag 1), then a varint length of u64::MAX.
        let body = [1u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode_body(&body).is_err());
    }

    #[test]
    fn too_deep_json_is_rejected_at_encode() {
        let mut v = serde_json::json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            v = serde_json::json!([v]);
        }
        let event = ExecutionEventData::Custom {
            event_type: "deep".into(),
            data: v,
        };
        assert!(encode_event(event, &mut Vec::new()).is_err());
    }

    #[test]
    fn body_round_trips() {
        let decl = Declaration {
            execution_id: "e".into(),
            tenant_id: "t".into(),
        };
        let event = ExecutionEventData::GoalEvaluated {
            step_id: None,
            goal_id: "g".into(),
            status: "met".into(),
            score: Some(0.1 + 0.2),
            reason: None,
        };
        let mut out = Vec::new();
        encode_declaration(Some(&decl), &mut out);
        assert!(encode_event(event.clone(), &mut out).is_ok());
        assert_eq!(decode_body(&out), Ok((Some(decl), event)));
    }
}
