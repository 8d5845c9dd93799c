//! LLM budgets: what a run has spent, checked before each call.

use std::collections::HashMap;

use flotilla_spec::Budget;

use crate::call::agents::{AgentError, AgentRequest, Usage};
use crate::call::registry::AgentEntry;
use crate::metrics::Metrics;

/// What a run has spent on LLM calls, and its budget: checked before each call.
pub(crate) struct Spend {
    pub workflow: String,
    pub budget: Option<Budget>,
    pub total: Usage,
    pub by_agent: HashMap<String, Usage>,
}

impl Spend {
    /// Refuses a call whose estimate would take the run's or the agent's spend past its
    /// budget, counting the refusal in `llm_budget_exceeded_total`.
    pub(crate) fn check(
        &self,
        entry: &AgentEntry,
        req: &AgentRequest,
        metrics: &Metrics,
    ) -> Result<(), AgentError> {
        let Some(estimate) = entry.runtime.estimate(req) else {
            return Ok(());
        };
        let on_agent = self.by_agent.get(&entry.name).copied().unwrap_or_default();
        let limits = [
            ("workflow", self.workflow.as_str(), self.budget, self.total),
            ("agent", entry.name.as_str(), entry.budget, on_agent),
        ];
        for (scope, name, budget, spent) in limits {
            let Some(budget) = budget else { continue };
            let over = if let Some(usd) = budget.usd
                && spent.cost_usd + estimate.cost_usd > usd
            {
                Some(format!(
                    "{usd} USD per run; {:.4} USD spent, this call would cost up to {:.4} USD",
                    spent.cost_usd, estimate.cost_usd
                ))
            } else if let Some(tokens) = budget.tokens
                && spent.tokens() + estimate.tokens() > tokens
            {
                Some(format!(
                    "{tokens} tokens per run; {} spent, this call would use up to {}",
                    spent.tokens(),
                    estimate.tokens()
                ))
            } else {
                None
            };
            if let Some(detail) = over {
                metrics.budget_exceeded(scope, name);
                return Err(AgentError::permanent(format!(
                    "budget exceeded: {scope} `{name}` allows {detail}; the call was not made"
                )));
            }
        }
        Ok(())
    }
}
