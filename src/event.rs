//! The event vocabulary of the contract: [`ExecutionEventData`], [`StoredEvent`] and the
//! small types they carry.
//!
//! The JSON form is the contract's (`"type"` tag, snake_case names). The on-disk form is
//! not JSON: `codec.rs` maps these types to a bincode-friendly mirror, so nothing here
//! constrains the storage format beyond "every field round-trips".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ExecutionId, StepId, TenantId};

/// One event as stored: its payload plus what the store assigned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position of the event in its execution: 1, 2, 3, … with no gap.
    pub sequence: u64,
    /// The execution the event belongs to.
    pub execution_id: ExecutionId,
    /// The tenant that owns the execution.
    pub tenant_id: TenantId,
    /// The payload as appended.
    pub event: ExecutionEventData,
    /// When the store accepted the event (UTC, nanosecond precision; non-decreasing
    /// in sequence order within an execution).
    pub timestamp: DateTime<Utc>,
}

/// Every state transition of an execution; replaying them rebuilds its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecutionEventData {
    /// The execution started.
    ExecutionStarted {
        /// The execution or step that spawned this one, if any.
        parent: Option<ParentLink>,
        /// Free-form metadata from the framework.
        metadata: Option<serde_json::Value>,
    },
    /// A step started.
    StepStarted {
        /// The step.
        step_id: StepId,
        /// The enclosing step, if nested.
        parent_step_id: Option<StepId>,
        /// What kind of step it is.
        step_type: StepType,
        /// Human-readable step name.
        name: String,
    },
    /// A step completed successfully.
    StepCompleted {
        /// The step.
        step_id: StepId,
        /// Its output, if any.
        output: Option<String>,
        /// Wall-clock duration.
        duration_ms: u64,
    },
    /// A step failed.
    StepFailed {
        /// The step.
        step_id: StepId,
        /// Why it failed.
        error: ExecutionError,
    },
    /// The execution paused.
    ExecutionPaused {
        /// Why it paused.
        reason: String,
    },
    /// The execution resumed.
    ExecutionResumed,
    /// The execution completed successfully.
    ExecutionCompleted {
        /// Its final output, if any.
        output: Option<String>,
        /// Wall-clock duration.
        duration_ms: u64,
    },
    /// The execution failed.
    ExecutionFailed {
        /// Why it failed.
        error: ExecutionError,
    },
    /// The execution was cancelled.
    ExecutionCancelled {
        /// Why it was cancelled.
        reason: String,
    },
    /// An artifact was stored elsewhere and is referenced here.
    ArtifactStored {
        /// The artifact.
        artifact_id: String,
        /// The step that produced it.
        step_id: StepId,
        /// Hash of its content.
        content_hash: String,
        /// Its size.
        size_bytes: u64,
    },
    /// A step was discovered while the execution ran (agentic loop, model output).
    StepDiscovered {
        /// The discovered step.
        step_id: StepId,
        /// The step whose work revealed it, if any.
        discovered_by: Option<StepId>,
        /// What revealed it.
        source_type: StepSourceType,
        /// Why it was added.
        reason: String,
        /// Depth in the discovery chain.
        depth: u32,
    },
    /// A tool call started; its input is known.
    ToolCallStarted {
        /// The step making the call, if any.
        step_id: Option<StepId>,
        /// The call's id, matching its completion.
        tool_call_id: String,
        /// The tool.
        tool_name: String,
        /// The call's input.
        input: serde_json::Value,
    },
    /// A tool call completed; its output is known.
    ToolCallCompleted {
        /// The step making the call, if any.
        step_id: Option<StepId>,
        /// The call's id, matching its start.
        tool_call_id: String,
        /// The call's output.
        output: serde_json::Value,
    },
    /// A checkpoint was saved.
    CheckpointSaved {
        /// The step at which it was taken, if any.
        step_id: Option<StepId>,
        /// The checkpoint.
        checkpoint_id: String,
        /// Hash of the checkpointed state.
        state_hash: String,
    },
    /// A goal was evaluated.
    GoalEvaluated {
        /// The step that evaluated it, if any.
        step_id: Option<StepId>,
        /// The goal.
        goal_id: String,
        /// "met", "not_met" or "progressing".
        status: String,
        /// A score, if the evaluator gives one (stored bit for bit).
        score: Option<f64>,
        /// The evaluator's explanation.
        reason: Option<String>,
    },
    /// An event type the framework defines itself.
    Custom {
        /// The framework's name for it.
        event_type: String,
        /// Its payload.
        data: serde_json::Value,
    },
}

/// Links an execution to what spawned it (a sub-agent run, a retry, a fork).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParentLink {
    /// The spawning execution.
    pub execution_id: ExecutionId,
    /// The step in it that spawned this execution, if known.
    pub step_id: Option<StepId>,
    /// How the two are related.
    pub relation: ParentRelation,
}

/// How a child execution relates to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentRelation {
    /// Spawned as a sub-agent or sub-workflow of the parent.
    Child,
    /// A retry of the parent after it failed.
    Retry,
    /// A fork that replays the parent up to a point and diverges.
    Fork,
}

/// What kind of work a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepType {
    /// Plain code: a function node in the graph.
    FunctionNode,
    /// A call to a language model.
    LlmCall,
    /// A call to a tool.
    ToolCall,
    /// A nested agent or sub-graph.
    Agent,
    /// A routing or branching decision.
    Router,
    /// Waiting for a human.
    HumanInput,
}

/// What caused a step to be discovered at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepSourceType {
    /// A planner produced it.
    Planner,
    /// Parsed from a model's output.
    LlmOutput,
    /// Implied by a tool's result.
    ToolResult,
    /// Added by a human.
    Human,
    /// A retry of a failed step.
    Retry,
}

/// Why a step or execution failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecutionError {
    /// The broad class of failure.
    pub kind: ExecutionErrorKind,
    /// What happened, for humans.
    pub message: String,
    /// Whether retrying the same work may succeed.
    pub retryable: bool,
    /// A machine-readable code from the failing component, if any.
    pub code: Option<String>,
}

impl ExecutionError {
    /// An error of `kind` with `message`, not retryable, without a code.
    pub fn new(kind: ExecutionErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: false,
            code: None,
        }
    }
}

/// Broad classes of failure an agent framework distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionErrorKind {
    /// A deadline passed.
    Timeout,
    /// A tool failed.
    Tool,
    /// The model failed or returned something unusable.
    Model,
    /// Input or output failed validation.
    Validation,
    /// A policy or guardrail refused the work.
    Policy,
    /// The framework itself failed.
    Internal,
}
