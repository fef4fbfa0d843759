//! `execlog events --timeline`: an execution as people debugging a run read it.
//!
//! One line per step and per tool call, indented under the step that started it
//! (`parent_step_id`, a tool call's `step_id`), with its outcome and duration merged in
//! from the matching `step_completed` / `step_failed` / `tool_call_completed` (one whose
//! start is not in the history gets a line of its own); other events get a line of
//! their own at the depth of their step. Times are offsets from
//! the execution's first event.

use std::collections::{HashMap, HashSet};

use execlog::{ExecutionEventData as E, StoredEvent};

/// The timeline of `events` (one execution, in sequence order), line by line.
pub fn render(events: &[StoredEvent]) -> Vec<String> {
    let start = events.first().map(|e| e.timestamp);
    let ends = outcomes(events);
    let opened = opened(events);
    let mut depth_of_step: HashMap<String, usize> = HashMap::new();
    let mut lines = Vec::new();
    for e in events {
        let offset = start.map_or(0.0, |s| {
            (e.timestamp - s).num_microseconds().unwrap_or(0) as f64 / 1e6
        });
        let step_depth = |id: &Option<String>| {
            id.as_ref()
                .and_then(|id| depth_of_step.get(id).copied())
                .unwrap_or(0)
        };
        let (depth, text) = match &e.event {
            E::StepStarted {
                step_id,
                parent_step_id,
                step_type,
                name,
            } => {
                let depth = step_depth(&parent_step_id.as_ref().map(|p| p.to_string())) + 1;
                depth_of_step.insert(step_id.to_string(), depth);
                let end = ends
                    .get(&step_id.to_string())
                    .cloned()
                    .unwrap_or_else(|| "running".into());
                (
                    depth,
                    format!("step {name:?} ({}) {end}", json_name(step_type)),
                )
            }
            E::ToolCallStarted {
                step_id,
                tool_call_id,
                tool_name,
                ..
            } => {
                let depth = step_depth(&step_id.as_ref().map(|s| s.to_string())) + 1;
                let end = ends
                    .get(tool_call_id)
                    .cloned()
                    .unwrap_or_else(|| "running".into());
                (depth, format!("tool {tool_name} [{tool_call_id}] {end}"))
            }
            // Merged into the line of what they complete, if it is in the history.
            E::StepCompleted { step_id, .. } | E::StepFailed { step_id, .. }
                if opened.contains(step_id.as_str()) =>
            {
                continue;
            }
            E::ToolCallCompleted { tool_call_id, .. } if opened.contains(tool_call_id.as_str()) => {
                continue;
            }
            other => {
                let step = event_step(other);
                let depth = step_depth(&step) + usize::from(step.is_some());
                (depth, other_line(other))
            }
        };
        lines.push(format!("{offset:>+12.6}s  {}{text}", "  ".repeat(depth)));
    }
    lines
}

/// The ids of the steps and tool calls whose start is in `events`: their outcomes are
/// merged into that line; an outcome without one gets a line of its own.
fn opened(events: &[StoredEvent]) -> HashSet<&str> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            E::StepStarted { step_id, .. } => Some(step_id.as_str()),
            E::ToolCallStarted { tool_call_id, .. } => Some(tool_call_id.as_str()),
            _ => None,
        })
        .collect()
}

/// How each step and tool call ended, by step id or tool call id.
fn outcomes(events: &[StoredEvent]) -> HashMap<String, String> {
    let started: HashMap<String, &StoredEvent> = events
        .iter()
        .filter_map(|e| match &e.event {
            E::ToolCallStarted { tool_call_id, .. } => Some((tool_call_id.clone(), e)),
            _ => None,
        })
        .collect();
    let mut ends = HashMap::new();
    for e in events {
        match &e.event {
            E::StepCompleted {
                step_id,
                duration_ms,
                output,
            } => {
                let output = output
                    .as_deref()
                    .map(|o| format!(" -> {}", short(o)))
                    .unwrap_or_default();
                ends.insert(
                    step_id.to_string(),
                    format!("completed in {duration_ms} ms{output}"),
                );
            }
            E::StepFailed { step_id, error } => {
                ends.insert(
                    step_id.to_string(),
                    format!("FAILED: {}", short(&error.message)),
                );
            }
            E::ToolCallCompleted {
                tool_call_id,
                output,
                ..
            } => {
                let took = started.get(tool_call_id).map_or(String::new(), |s| {
                    let us = (e.timestamp - s.timestamp).num_microseconds().unwrap_or(0);
                    format!(" in {:.3} ms", us as f64 / 1000.0)
                });
                ends.insert(
                    tool_call_id.clone(),
                    format!("completed{took} -> {}", short(&output.to_string())),
                );
            }
            _ => {}
        }
    }
    ends
}

/// The step an event belongs to, if it names one.
fn event_step(event: &E) -> Option<String> {
    match event {
        E::ArtifactStored { step_id, .. } => Some(step_id.to_string()),
        E::StepDiscovered { discovered_by, .. } => discovered_by.as_ref().map(|s| s.to_string()),
        E::StepCompleted { step_id, .. } | E::StepFailed { step_id, .. } => {
            Some(step_id.to_string())
        }
        E::CheckpointSaved { step_id, .. } | E::GoalEvaluated { step_id, .. } => {
            step_id.as_ref().map(|s| s.to_string())
        }
        _ => None,
    }
}

/// The line of an event that is neither a step nor a tool call: its JSON type, and the
/// detail that matters.
fn other_line(event: &E) -> String {
    let kind = serde_json::to_value(event)
        .ok()
        .and_then(|v| v["type"].as_str().map(String::from))
        .unwrap_or_else(|| "?".into());
    let detail = match event {
        E::ExecutionCompleted { duration_ms, .. } => format!("in {duration_ms} ms"),
        E::ExecutionFailed { error } => short(&error.message),
        E::ExecutionPaused { reason } | E::ExecutionCancelled { reason } => short(reason),
        E::GoalEvaluated {
            goal_id, status, ..
        } => format!("{goal_id}: {status}"),
        E::CheckpointSaved { checkpoint_id, .. } => checkpoint_id.clone(),
        E::ArtifactStored {
            artifact_id,
            size_bytes,
            ..
        } => format!("{artifact_id} ({size_bytes} bytes)"),
        E::Custom { event_type, .. } => event_type.clone(),
        // An outcome whose start is not in the history.
        E::StepCompleted {
            step_id,
            duration_ms,
            ..
        } => format!("{step_id} in {duration_ms} ms (its start is not in the history)"),
        E::StepFailed { step_id, error } => format!(
            "{step_id}: {} (its start is not in the history)",
            short(&error.message)
        ),
        E::ToolCallCompleted { tool_call_id, .. } => {
            format!("{tool_call_id} (its start is not in the history)")
        }
        _ => String::new(),
    };
    if detail.is_empty() {
        kind
    } else {
        format!("{kind}: {detail}")
    }
}

/// At most 60 characters of `text`, on one line.
fn short(text: &str) -> String {
    let one_line = text.replace('\n', " ");
    match one_line.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

/// How a unit enum value is named in JSON (`llm_call`).
fn json_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}
