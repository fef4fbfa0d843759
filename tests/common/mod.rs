//! Helpers shared by the integration tests: sample events of every variant, stores in
//! temporary directories.

#![allow(dead_code)]

pub mod crash_image;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod segment_files;
pub mod sidecars;
pub mod verify_after_open;
pub mod writer;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use execlog::*;
use serde_json::json;

/// Runs `command` with `stdin` as its standard input and collects what it printed.
pub fn output_with_stdin(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    if let Some(mut pipe) = child.stdin.take() {
        match pipe.write_all(stdin.as_bytes()) {
            // The command ended (a usage error, say) before reading all its input.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap_or_else(|e| panic!("cannot feed {command:?}: {e}")),
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{command:?} did not finish: {e}"))
}

/// One event of each of the 17 variants, with every optional field set, nested JSON,
/// awkward floats and unicode.
pub fn every_variant() -> Vec<ExecutionEventData> {
    use ExecutionEventData as E;
    let step = StepId::from("step-ü/1");
    let err = ExecutionError {
        kind: ExecutionErrorKind::Tool,
        message: "tool timed out ⏱".into(),
        retryable: true,
        code: Some("E_TIMEOUT".into()),
    };
    vec![
        E::ExecutionStarted {
            parent: Some(ParentLink {
                execution_id: ExecutionId::from("parent"),
                step_id: Some(step.clone()),
                relation: ParentRelation::Child,
            }),
            metadata: Some(
                json!({"model": "m", "temp": 0.1, "tags": ["a", {"b": null}], "big": u64::MAX, "neg": -5}),
            ),
        },
        E::StepStarted {
            step_id: step.clone(),
            parent_step_id: Some(StepId::from("root")),
            step_type: StepType::FunctionNode,
            name: "plan".into(),
        },
        E::StepCompleted {
            step_id: step.clone(),
            output: Some("done".into()),
            duration_ms: 42,
        },
        E::StepFailed {
            step_id: step.clone(),
            error: err.clone(),
        },
        E::ExecutionPaused {
            reason: "waiting for approval".into(),
        },
        E::ExecutionResumed,
        E::ExecutionCompleted {
            output: None,
            duration_ms: u64::MAX,
        },
        E::ExecutionFailed { error: err },
        E::ExecutionCancelled {
            reason: "user".into(),
        },
        E::ArtifactStored {
            artifact_id: "art".into(),
            step_id: step.clone(),
            content_hash: "sha256:00".into(),
            size_bytes: 1 << 40,
        },
        E::StepDiscovered {
            step_id: StepId::from("found"),
            discovered_by: Some(step.clone()),
            source_type: StepSourceType::LlmOutput,
            reason: "model proposed".into(),
            depth: 3,
        },
        E::ToolCallStarted {
            step_id: Some(step.clone()),
            tool_call_id: "call-1".into(),
            tool_name: "search".into(),
            input: json!({"q": "rust", "k": 1e-300, "pi": std::f64::consts::PI}),
        },
        E::ToolCallCompleted {
            step_id: None,
            tool_call_id: "call-1".into(),
            output: json!([1, 2.5, "three", [true, false], {}]),
        },
        E::CheckpointSaved {
            step_id: None,
            checkpoint_id: "cp".into(),
            state_hash: "h".into(),
        },
        E::GoalEvaluated {
            step_id: Some(step),
            goal_id: "g".into(),
            status: "progressing".into(),
            score: Some(0.1 + 0.2),
            reason: Some("closer".into()),
        },
        E::Custom {
            event_type: "x.custom".into(),
            data: json!({"nested": {"deep": [0.30000000000000004, -0.0, 5e-324]}}),
        },
        E::Custom {
            event_type: String::new(),
            data: serde_json::Value::Null,
        },
    ]
}

/// Appends `batches` batches of 25 `step_event`s to each of executions "a" and "b" of
/// tenant "t", interleaved: with `small_segments`, sealed segments that each hold
/// records of both.
pub fn fill_a_and_b(store: &LogStore, batches: u64) {
    let t = TenantId::from("t");
    for batch in 0..batches {
        for name in ["a", "b"] {
            let events = (1..=25).map(|i| step_event(batch * 25 + i)).collect();
            store
                .append_batch_blocking(&ExecutionId::from(name), &t, events)
                .unwrap();
        }
    }
}

/// A small event with a distinguishing number.
pub fn step_event(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("s{n}")),
        output: Some(format!("output {n}")),
        duration_ms: n,
    }
}

/// The number `step_event` put in an event.
pub fn event_number(e: &ExecutionEventData) -> Option<u64> {
    match e {
        ExecutionEventData::StepCompleted { duration_ms, .. } => Some(*duration_ms),
        _ => None,
    }
}

/// Options with small segments, so tests cross segment boundaries.
pub fn small_segments() -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(4)
}

/// The `execlog::Error` inside an `anyhow::Error`.
pub fn engine_error(e: &anyhow::Error) -> &Error {
    e.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not an execlog::Error: {e:?}"))
}

/// Asserts that every batch visible in `events` is whole. Tests tag the events of one
/// append as `StepCompleted { step_id: <tag of the append>, duration_ms: <its length> }`,
/// so a run of equal tags must be exactly that long.
pub fn assert_whole_batches(events: &[StoredEvent], context: &str) {
    let mut i = 0;
    while i < events.len() {
        let ExecutionEventData::StepCompleted {
            step_id,
            duration_ms,
            ..
        } = &events[i].event
        else {
            panic!("{context}: unexpected event at sequence {}", i + 1)
        };
        let run = events[i..]
            .iter()
            .take_while(|e| {
                matches!(&e.event, ExecutionEventData::StepCompleted { step_id: s, .. } if s == step_id)
            })
            .count();
        assert_eq!(
            run as u64,
            *duration_ms,
            "{context}: partial batch at sequence {}",
            i + 1
        );
        i += run;
    }
}

/// Every event in `served` (what an open returned) is in `survived` (what an open
/// after a later power cut returns), with the same sequence and content.
pub fn assert_served_survived(served: &[StoredEvent], survived: &[StoredEvent], ctx: &str) {
    for s in served {
        let after = survived.get(s.sequence as usize - 1);
        assert!(
            after.is_some_and(|a| a.sequence == s.sequence
                && a.event == s.event
                && a.timestamp == s.timestamp),
            "{ctx}: served event {} of {} lost or changed by a later power cut",
            s.sequence,
            s.execution_id
        );
    }
}

/// What `stats()` must report, counted through the public API: the executions lists
/// show for `tenants`, their events, and how many of the tenants have one.
pub fn stats_recount(store: &LogStore, tenants: &[TenantId]) -> (usize, u64, usize) {
    let (mut executions, mut events, mut with_one) = (0, 0, 0);
    for t in tenants {
        let listed = store.list_executions_blocking(t, usize::MAX, 0).unwrap();
        with_one += usize::from(!listed.is_empty());
        executions += listed.len();
        for e in &listed {
            events += store.get_latest_sequence_blocking(e).unwrap().unwrap_or(0);
        }
    }
    (executions, events, with_one)
}
