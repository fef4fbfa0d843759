//! `execlog events | list | stats | verify`: read-only views of a store.
//!
//! Each opens the store with `LogStore::open_reader`: without the lock and through
//! read-only handles, so none of them changes a byte on disk, they work on a store
//! another process is writing (showing what that writer made durable), on a
//! read-only mount and on a backup copy.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use execlog::{ExecutionEventData, ExecutionId, LogStore, StoredEvent, TenantId};

fn open(dir: &Path) -> Result<LogStore, String> {
    crate::dir_kind(dir)?; // a file is named as such
    LogStore::open_reader(dir).map_err(|e| e.to_string())
}

/// The exit code of a lookup of an execution or tenant the store does not hold (the
/// message goes to stderr): distinct from 1 (a problem) and 2 (usage), so that scripts
/// can tell "not there" from an error.
pub const NOT_FOUND: u8 = 3;

/// How `events` prints.
pub enum View {
    Json,
    Pretty,
    Timeline,
}

pub fn events(dir: &Path, execution: &str, after: u64, view: View) -> Result<ExitCode, String> {
    let store = open(dir)?;
    let id = ExecutionId::from(execution);
    let latest = store
        .get_latest_sequence_blocking(&id)
        .map_err(|e| e.to_string())?;
    if latest.is_none() {
        eprintln!("execlog: no execution {execution} in {}", dir.display());
        return Ok(ExitCode::from(NOT_FOUND));
    }
    // A known execution with nothing after `after` is a normal, silent end (polling).
    let events = store
        .load_events_after_blocking(&id, after)
        .map_err(|e| e.to_string())?;
    let mut lines = Vec::with_capacity(events.len() + 1);
    if let View::Timeline = view {
        lines = crate::timeline::render(&events);
    } else if let View::Pretty = view {
        lines.push(format!(
            "{:>6}  {:<30}  {:<20}  summary",
            "seq", "time (UTC)", "type"
        ));
        for e in &events {
            let (kind, summary) = describe(&e.event);
            lines.push(format!(
                "{:>6}  {:<30}  {:<20}  {summary}",
                e.sequence,
                e.timestamp.format("%Y-%m-%d %H:%M:%S%.6f"),
                kind
            ));
        }
    } else {
        for e in &events {
            lines.push(json_line(e)?);
        }
    }
    emit(lines)
}

/// Writes lines to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(lines: impl IntoIterator<Item = String>) -> Result<ExitCode, String> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        match writeln!(out, "{line}") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(format!("cannot write to stdout: {e}")),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to stdout: {e}"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn json_line(e: &StoredEvent) -> Result<String, String> {
    serde_json::to_string(e).map_err(|e| format!("cannot print event: {e}"))
}

/// The event's type tag and a one-line summary.
pub fn describe(event: &ExecutionEventData) -> (String, String) {
    let value = serde_json::to_value(event).unwrap_or_default();
    let kind = value["type"].as_str().unwrap_or("?").to_string();
    use ExecutionEventData as E;
    let summary = match event {
        E::StepStarted {
            name, step_type, ..
        } => format!("{name} ({})", json_name(step_type)),
        E::StepCompleted {
            step_id,
            duration_ms,
            ..
        } => format!("{step_id} in {duration_ms} ms"),
        E::StepFailed { step_id, error } => format!("{step_id}: {}", error.message),
        E::ExecutionFailed { error } => error.message.clone(),
        E::ExecutionPaused { reason } | E::ExecutionCancelled { reason } => reason.clone(),
        E::ToolCallStarted {
            tool_name,
            tool_call_id,
            ..
        } => format!("{tool_name} [{tool_call_id}]"),
        E::ToolCallCompleted {
            tool_call_id,
            output,
            ..
        } => format!("[{tool_call_id}] -> {output}"),
        E::CheckpointSaved { checkpoint_id, .. } => checkpoint_id.clone(),
        E::GoalEvaluated {
            goal_id,
            status,
            score,
            ..
        } => match score {
            Some(s) => format!("{goal_id}: {status} ({s:.2})"),
            None => format!("{goal_id}: {status}"),
        },
        E::Custom { event_type, .. } => event_type.clone(),
        E::ArtifactStored {
            artifact_id,
            size_bytes,
            ..
        } => format!("{artifact_id} ({size_bytes} bytes)"),
        E::StepDiscovered {
            step_id, reason, ..
        } => format!("{step_id}: {reason}"),
        E::ExecutionCompleted { duration_ms, .. } => format!("in {duration_ms} ms"),
        E::ExecutionStarted { .. } | E::ExecutionResumed => String::new(),
    };
    let mut summary: String = summary.chars().take(80).collect();
    summary = summary.replace('\n', " ");
    (kind, summary)
}

/// How a unit enum value is named in JSON (`llm_call`, not Rust's `LlmCall`).
fn json_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// Every execution of the store with its tenant, newest first.
fn every_execution(store: &LogStore) -> Result<Vec<(ExecutionId, TenantId)>, String> {
    let err = |e: execlog::Error| e.to_string();
    let all = store.all_executions_blocking().map_err(err)?;
    let mut owned = Vec::with_capacity(all.len());
    for (id, _) in all.into_iter().rev() {
        if let Some(tenant) = store.execution_tenant_blocking(&id).map_err(err)? {
            owned.push((id, tenant));
        }
    }
    Ok(owned)
}

/// `execlog tenants`: every tenant with its number of executions, by first appearance.
pub fn tenants(dir: &Path) -> Result<ExitCode, String> {
    let store = open(dir)?;
    let mut counts: Vec<(TenantId, usize)> = Vec::new();
    let mut at: std::collections::HashMap<TenantId, usize> = std::collections::HashMap::new();
    for (_, tenant) in every_execution(&store)?.into_iter().rev() {
        let i = *at.entry(tenant.clone()).or_insert_with(|| {
            counts.push((tenant, 0));
            counts.len() - 1
        });
        counts[i].1 += 1;
    }
    if counts.is_empty() {
        eprintln!("execlog: no executions in {}", dir.display());
    }
    emit(counts.into_iter().map(|(tenant, executions)| {
        serde_json::json!({ "tenant": tenant, "executions": executions }).to_string()
    }))
}

/// `execlog list` without `--tenant`: executions of every tenant, newest first.
fn list_all(dir: &Path, limit: usize, offset: usize) -> Result<ExitCode, String> {
    let store = open(dir)?;
    let all = every_execution(&store)?;
    if all.is_empty() {
        eprintln!("execlog: no executions in {}", dir.display());
        return Ok(ExitCode::from(NOT_FOUND));
    }
    let total = all.len();
    let mut lines = Vec::new();
    for (id, tenant) in all.into_iter().skip(offset).take(limit) {
        let mut line = summary(&store, &id)?;
        line["tenant"] = serde_json::json!(tenant);
        lines.push(line.to_string());
    }
    say_more(offset, lines.len(), total);
    emit(lines)
}

/// Says on stderr that a page did not show every execution, and how to see the next.
fn say_more(offset: usize, shown: usize, total: usize) {
    let next = offset.saturating_add(shown);
    if shown > 0 && next < total {
        eprintln!("execlog: showed {shown} of {total} executions; the next with --offset {next}");
    }
}

pub fn list(
    dir: &Path,
    tenant: Option<&str>,
    limit: usize,
    offset: usize,
) -> Result<ExitCode, String> {
    let Some(tenant) = tenant else {
        return list_all(dir, limit, offset);
    };
    let store = open(dir)?;
    let tenant_id = TenantId::from(tenant);
    let ids = store
        .list_executions_blocking(&tenant_id, limit, offset)
        .map_err(|e| e.to_string())?;
    if ids.is_empty() {
        let count = |limit| {
            store
                .list_executions_blocking(&tenant_id, limit, 0)
                .map(|ids| ids.len())
                .map_err(|e| e.to_string())
        };
        if count(1)? == 0 {
            eprintln!(
                "execlog: no executions of tenant {tenant} in {}",
                dir.display()
            );
            return Ok(ExitCode::from(NOT_FOUND));
        }
        if limit > 0 {
            let all = count(usize::MAX)?;
            eprintln!("execlog: no executions at offset {offset}: tenant {tenant} has {all}");
        }
    }
    if ids.len() == limit {
        let total = store
            .list_executions_blocking(&tenant_id, usize::MAX, 0)
            .map_err(|e| e.to_string())?
            .len();
        say_more(offset, ids.len(), total);
    }
    let mut lines = Vec::with_capacity(ids.len());
    for id in ids {
        lines.push(summary(&store, &id)?.to_string());
    }
    emit(lines)
}

/// One execution as `list` shows it: id, event count, first and last time, and its
/// status as its last event tells it (read: two records, not the whole history).
fn summary(store: &LogStore, id: &ExecutionId) -> Result<serde_json::Value, String> {
    let err = |e: execlog::Error| e.to_string();
    let latest = store
        .get_latest_sequence_blocking(id)
        .map_err(err)?
        .unwrap_or(0);
    let first = store.read_range_blocking(id, 0, 1).map_err(err)?;
    let last = store
        .read_range_blocking(id, latest.saturating_sub(1), 1)
        .map_err(err)?;
    let time = |events: &[StoredEvent]| {
        events.first().map(|e| {
            e.timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        })
    };
    let status = match last.first().map(|e| &e.event) {
        Some(ExecutionEventData::ExecutionCompleted { .. }) => "completed",
        Some(ExecutionEventData::ExecutionFailed { .. }) => "failed",
        Some(ExecutionEventData::ExecutionCancelled { .. }) => "cancelled",
        Some(ExecutionEventData::ExecutionPaused { .. }) => "paused",
        _ => "running",
    };
    Ok(serde_json::json!({
        "execution_id": id,
        "events": latest,
        "first": time(&first),
        "last": time(&last),
        "status": status,
    }))
}

pub fn stats(dir: &Path, json: bool) -> Result<ExitCode, String> {
    let store = open(dir)?;
    let s = store.stats();
    let r = store.recovery_report();
    let file_bytes: u64 = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    // Bytes whose index came from the checkpoint were checksummed, not decoded.
    let record_by_record = r.bytes_scanned.saturating_sub(r.checkpoint_bytes);
    if json {
        let value = serde_json::json!({
            "segments": s.segments,
            "events": s.events,
            "executions": s.executions,
            "deleted_executions": s.deleted_executions,
            "tenants": s.tenants,
            "data_bytes": s.data_bytes,
            "file_bytes": file_bytes,
            "index_bytes": s.index_bytes,
            "sparse_index_bytes": s.sparse_index_bytes,
            "keyed_appends": s.idempotency_keys,
            "keyed_append_table_bytes": s.idempotency_key_bytes,
            "open": {
                "records": r.records,
                "segments": r.segments_scanned,
                "bytes_from_checkpoint": r.checkpoint_bytes,
                "bytes_scanned_record_by_record": record_by_record,
                "checkpoint_ignored": r.checkpoint_ignored,
                "torn_tail": r.truncated_at.map(|(segment, offset)| serde_json::json!({
                    "segment": segment,
                    "offset": offset,
                    "reason": r.torn_reason,
                })),
                "ignored_files": r.ignored_files,
                "duration_us": r.duration.as_micros() as u64,
            },
        });
        out!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    out!("segments:          {}", s.segments);
    out!("events:            {}", s.events);
    out!("executions:        {}", s.executions);
    out!(
        "deleted:           {} executions (ids reserved)",
        s.deleted_executions
    );
    out!("tenants:           {}", s.tenants);
    out!("data bytes:        {}", s.data_bytes);
    out!("file bytes:        {file_bytes} (segments are zero-filled ahead of the data)");
    out!(
        "index bytes:       {} ({} in sparse entries)",
        s.index_bytes,
        s.sparse_index_bytes
    );
    out!(
        "keyed appends:     {} ({} bytes of lookup tables; the keys stay on disk)",
        s.idempotency_keys,
        s.idempotency_key_bytes
    );
    out!(
        "open:              {} records indexed in {:?}; {record_by_record} bytes read record by record",
        r.records,
        r.duration
    );
    match (&r.checkpoint_ignored, r.checkpoint_bytes) {
        (Some(why), _) => out!("checkpoint:        ignored: {why} (every record scanned)"),
        (None, 0) => out!("checkpoint:        none (every record scanned)"),
        (None, covered) => out!(
            "checkpoint:        index loaded for {covered} bytes of records (their checksums verified)"
        ),
    }
    match r.truncated_at {
        Some((seg, off)) => out!(
            "torn tail:         segment {seg} offset {off}: {} (not cut: read-only)",
            r.torn_reason.as_deref().unwrap_or("")
        ),
        None => out!("torn tail:         none"),
    }
    if !r.ignored_files.is_empty() {
        out!("ignored files:     {}", r.ignored_files.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(dir: &Path) -> Result<ExitCode, String> {
    let store = match open(dir) {
        Ok(store) => store,
        Err(why) if crate::dir_kind(dir)? == crate::DirKind::Store => {
            return survey(dir, &why);
        }
        Err(why) => return Err(why),
    };
    let bar = crate::progress(0, "verifying");
    let report = store.verify(|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    for p in &report.problems {
        out!("problem: {p}");
    }
    // Every record of the sealed segments too, seals and padding included: what the
    // background scrubber checks, without waiting for it.
    let scrub = store.scrub_now().map_err(|e| e.to_string())?;
    for d in &scrub.damaged {
        out!(
            "damaged: segment {} bytes {}..{} ({} bytes): {}",
            d.segment,
            d.from,
            d.to,
            d.to - d.from,
            d.reason
        );
    }
    let clean = report.is_clean() && scrub.is_clean();
    eprintln!(
        "execlog: verified {} executions, {} events, {} records scanned, {} sealed bytes scrubbed: {}",
        report.executions,
        report.events,
        store.recovery_report().records,
        scrub.bytes,
        if clean { "clean" } else { "PROBLEMS FOUND" }
    );
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `verify` of a store that does not open: every damaged range, and what is readable.
fn survey(dir: &Path, why: &str) -> Result<ExitCode, String> {
    eprintln!("execlog: the store does not open ({why}); surveying its segments instead");
    let surveys = execlog::survey_damage(dir).map_err(|e| e.to_string())?;
    for s in &surveys {
        for (from, to, reason) in &s.damaged {
            out!(
                "damaged: segment {} bytes {from}..{to} ({} bytes): {reason}",
                s.segment,
                to - from
            );
        }
    }
    for s in &surveys {
        out!(
            "segment {}: {} readable events, {} damaged ranges",
            s.segment,
            s.readable_events,
            s.damaged.len()
        );
    }
    Ok(ExitCode::FAILURE)
}
