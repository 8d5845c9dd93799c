//! What a run pins when it starts: its workflow and the behaviour of every agent its steps
//! (and their compensations) may call. Changing the configuration never changes a run in
//! flight; where agents are (endpoints, credentials) stays live.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AgentConfig, Workflow};

/// A run's pinned definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The workflow.
    pub workflow: Workflow,
    /// The behaviour ([`AgentConfig::behaviour`]) of each agent its steps may call, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, AgentConfig>,
}

impl Definition {
    /// `workflow` with the behaviour of the agents in `agents` that its steps name, or that
    /// offer a capability its steps ask for.
    pub fn pin(workflow: Workflow, agents: &BTreeMap<String, AgentConfig>) -> Definition {
        let mut named = Vec::new();
        let mut wanted = Vec::new();
        for s in &workflow.steps {
            named.extend(s.agent.iter());
            wanted.extend(s.capability.iter());
            if let Some(c) = &s.compensate {
                named.extend(c.agent.iter());
                wanted.extend(c.capability.iter());
            }
        }
        let pinned = agents
            .iter()
            .filter(|(name, a)| {
                named.contains(name) || a.capabilities.iter().any(|c| wanted.contains(&c))
            })
            .map(|(name, a)| (name.clone(), a.behaviour()))
            .collect();
        Definition {
            workflow,
            agents: pinned,
        }
    }

    /// The definition as stored, and its SHA-256: runs pin it by this hash.
    pub fn snapshot(&self) -> (String, String) {
        let json = serde_json::to_string(self).expect("a definition always serializes");
        let hash = hex::encode(Sha256::digest(json.as_bytes()));
        (json, hash)
    }

    /// Reads a stored definition; a bare workflow (stored before agents were pinned) has no
    /// pinned agents, so its runs use the live ones.
    pub fn parse(json: &str) -> Result<Definition, serde_json::Error> {
        serde_json::from_str(json).or_else(|e| {
            serde_json::from_str::<Workflow>(json)
                .map(|workflow| Definition {
                    workflow,
                    agents: BTreeMap::new(),
                })
                .map_err(|_| e)
        })
    }

    /// What moving a run from this definition to `to` changes.
    pub fn diff(&self, to: &Definition) -> DefinitionDiff {
        let ids = |d: &Definition| -> Vec<String> {
            d.workflow.steps.iter().map(|s| s.id.clone()).collect()
        };
        let (from_ids, to_ids) = (ids(self), ids(to));
        let json = |a: &AgentConfig| serde_json::to_value(a).ok();
        let agents_changed = self
            .agents
            .iter()
            .filter(|(name, a)| to.agents.get(*name).is_some_and(|b| json(b) != json(a)))
            .map(|(name, _)| name.clone())
            .collect();
        let steps_changed = self
            .workflow
            .steps
            .iter()
            .filter_map(|s| {
                let other = to.workflow.steps.iter().find(|t| t.id == s.id)?;
                (serde_json::to_value(s).ok() != serde_json::to_value(other).ok())
                    .then(|| s.id.clone())
            })
            .collect();
        DefinitionDiff {
            steps_added: to_ids
                .iter()
                .filter(|i| !from_ids.contains(i))
                .cloned()
                .collect(),
            steps_removed: from_ids
                .iter()
                .filter(|i| !to_ids.contains(i))
                .cloned()
                .collect(),
            steps_changed,
            agents_changed,
        }
    }
}

/// The difference between two definitions of a workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DefinitionDiff {
    /// Steps only the new definition has.
    pub steps_added: Vec<String>,
    /// Steps only the old definition has (their records stay, unused).
    pub steps_removed: Vec<String>,
    /// Steps in both whose settings differ.
    pub steps_changed: Vec<String>,
    /// Agents both pin, whose behaviour differs.
    pub agents_changed: Vec<String>,
}

impl DefinitionDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == DefinitionDiff::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> BTreeMap<String, AgentConfig> {
        let yaml = r#"{
            "t": {"kind": "builtin", "builtin": "template", "template": "old"},
            "h": {"kind": "http", "endpoints": ["http://127.0.0.1:1"], "capabilities": ["x"]},
            "other": {"kind": "builtin", "builtin": "echo"}
        }"#;
        serde_json::from_str(yaml).unwrap()
    }

    fn workflow(steps: &str) -> Workflow {
        serde_json::from_str(&format!(r#"{{"steps": {steps}}}"#)).unwrap()
    }

    #[test]
    fn pins_the_behaviour_of_named_and_capable_agents_only() {
        let wf = workflow(r#"[{"id": "a", "agent": "t"}, {"id": "b", "capability": "x"}]"#);
        let d = Definition::pin(wf, &agents());
        assert_eq!(d.agents.keys().collect::<Vec<_>>(), ["h", "t"]);
        assert_eq!(d.agents["t"].template.as_deref(), Some("old"));
        // Where an agent is stays live: not pinned.
        assert!(d.agents["h"].endpoints.is_empty());
        let (json, hash) = d.snapshot();
        assert_eq!(Definition::parse(&json).unwrap().snapshot().1, hash);
    }

    #[test]
    fn a_bare_workflow_parses_with_no_pinned_agents() {
        let wf = workflow(r#"[{"id": "a", "agent": "t"}]"#);
        let d = Definition::parse(&serde_json::to_string(&wf).unwrap()).unwrap();
        assert!(d.agents.is_empty());
        assert!(Definition::parse("{").is_err());
    }

    #[test]
    fn diffs_steps_and_agent_behaviour() {
        let old = Definition::pin(
            workflow(r#"[{"id": "a", "agent": "t"}, {"id": "b", "agent": "t", "needs": ["a"]}]"#),
            &agents(),
        );
        let mut changed = agents();
        changed.get_mut("t").unwrap().template = Some("new".into());
        let new = Definition::pin(
            workflow(r#"[{"id": "a", "agent": "t"}, {"id": "c", "agent": "t"}]"#),
            &changed,
        );
        let diff = old.diff(&new);
        assert_eq!(diff.steps_added, ["c"]);
        assert_eq!(diff.steps_removed, ["b"]);
        assert_eq!(diff.agents_changed, ["t"]);
        assert!(old.diff(&old).is_empty());
    }
}
