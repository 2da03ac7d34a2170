//! Renders the events of a run: a progress bar per phase on a terminal, plain
//! timestamped lines otherwise, one JSON object per line with `--format json`;
//! every line through the command's [`Output`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::apply::Event;
use crate::output::Output;
use crate::plan::Action;
use crate::state::Outcome;

/// How events are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Bars,
    Lines,
    Json,
    Quiet,
}

pub(crate) struct Progress<'o> {
    mode: Mode,
    out: &'o Output,
    inner: Mutex<Inner>,
    /// Actions under way, for the lines that say a gate is still waiting.
    waiting: Mutex<BTreeMap<String, Waiting>>,
    /// The phases that start something (and so pass health gates); a phase
    /// that only stops services is "done", not "healthy".
    gated: Mutex<HashSet<usize>>,
}

/// An action under way: when it began, when a line last spoke of it, and
/// the newest probe result.
struct Waiting {
    began: Instant,
    said: Instant,
    last_probe: Option<String>,
}

/// How often a line says that an action still waits (off a terminal, where
/// no bar moves): CI logs never look hung.
pub(crate) const STILL_WAITING: Duration = Duration::from_secs(5);

struct Inner {
    multi: MultiProgress,
    bars: HashMap<usize, ProgressBar>,
    current: usize,
}

fn stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

impl<'o> Progress<'o> {
    pub fn new(mode: Mode, out: &'o Output) -> Self {
        let multi = if mode == Mode::Bars {
            out.progress_bars()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        Self {
            mode,
            out,
            inner: Mutex::new(Inner {
                multi,
                bars: HashMap::new(),
                current: 0,
            }),
            waiting: Mutex::new(BTreeMap::new()),
            gated: Mutex::new(HashSet::new()),
        }
    }

    /// The word for a finished phase.
    fn phase_word(&self, phase: usize, ok: bool) -> &'static str {
        if !ok {
            "failed"
        } else if self.gated.lock().expect("progress lock").contains(&phase) {
            "healthy"
        } else {
            "done"
        }
    }

    /// Says, at most every [`STILL_WAITING`], which actions are still under
    /// way and what their last probe answered (plain lines only).
    pub fn tick(&self) {
        if self.mode != Mode::Lines {
            return;
        }
        let mut waiting = self.waiting.lock().expect("progress lock");
        for (service, w) in waiting.iter_mut() {
            if w.said.elapsed() < STILL_WAITING {
                continue;
            }
            w.said = Instant::now();
            let last = w
                .last_probe
                .as_deref()
                .map(|p| format!(" (last probe: {p})"))
                .unwrap_or_default();
            self.out.status(&format!(
                "{} {service}: still waiting after {} s{last}",
                stamp(),
                w.began.elapsed().as_secs()
            ));
        }
    }

    fn track(&self, e: &Event) {
        let mut waiting = self.waiting.lock().expect("progress lock");
        match e {
            Event::PhaseStarted { phase, .. } => {
                self.inner.lock().expect("progress lock").current = *phase;
            }
            Event::ActionStarted { service, action } => {
                if *action != Action::Destroy {
                    let phase = self.inner.lock().expect("progress lock").current;
                    self.gated.lock().expect("progress lock").insert(phase);
                }
                let now = Instant::now();
                waiting.insert(
                    service.to_string(),
                    Waiting {
                        began: now,
                        said: now,
                        last_probe: None,
                    },
                );
            }
            Event::Probe {
                service,
                healthy,
                detail,
            } => {
                if let Some(w) = waiting.get_mut(service.as_str()) {
                    w.last_probe = Some(format!(
                        "{} {detail}",
                        if *healthy { "ok" } else { "failed:" }
                    ));
                }
            }
            Event::ActionSucceeded { service, .. } | Event::ActionFailed { service, .. } => {
                waiting.remove(service.as_str());
            }
            _ => {}
        }
    }

    /// A line for humans (plain mode), or `None` for events not worth a line.
    fn line(&self, e: &Event) -> Option<String> {
        Some(match e {
            Event::ApplyStarted {
                revision,
                phases,
                actions,
            } => format!("revision {revision}: {actions} action(s) in {phases} phase(s)"),
            Event::Prepare { service, detail } => format!("{service}: {detail}"),
            Event::PhaseStarted { phase, services } => format!(
                "phase {phase}: {}",
                services
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::ActionStarted { service, action } => {
                format!("{service}: {} started", action.as_str())
            }
            Event::InstanceStarted { service, handles } => {
                format!("{service}: {} instance(s) started", handles.len())
            }
            Event::Probe { .. } => return None,
            Event::InstanceStopped { service, handles } => {
                format!("{service}: {} instance(s) stopped", handles.len())
            }
            Event::ActionSucceeded {
                service,
                action,
                elapsed_ms,
            } => format!("{service}: {} done in {elapsed_ms} ms", action.as_str()),
            Event::ActionFailed {
                service,
                action,
                reason,
            } => format!("{service}: {} FAILED: {reason}", action.as_str()),
            Event::PhaseFinished {
                phase,
                ok,
                elapsed_ms,
            } => format!(
                "phase {phase}: {} in {elapsed_ms} ms",
                self.phase_word(*phase, *ok)
            ),
            Event::Canary {
                service,
                step,
                steps,
                weight,
                verdict,
                detail,
                ..
            } => {
                let verdict = format!("{verdict:?}").to_lowercase();
                format!("{service}: canary step {step}/{steps} ({weight} %) {verdict}: {detail}")
            }
            Event::RollbackStarted { steps } => format!("rolling back {steps} step(s)"),
            Event::RollbackStep {
                service,
                step,
                ok,
                detail,
            } => format!(
                "rollback {service}: {step} {}: {detail}",
                if *ok { "ok" } else { "FAILED" }
            ),
            Event::Finished {
                revision,
                outcome,
                elapsed_ms,
            } => format!(
                "revision {revision}: {} in {elapsed_ms} ms",
                outcome_word(*outcome)
            ),
        })
    }

    pub fn handle(&self, e: &Event) {
        self.track(e);
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "at".into(),
                        serde_json::Value::String(crate::apply::now_rfc3339()),
                    );
                }
                self.out.data_lossy(&format!("{v}\n"));
            }
            Mode::Lines => {
                if let Some(l) = self.line(e) {
                    self.out.status(&format!("{} {l}", stamp()));
                }
            }
            Mode::Bars => self.bars(e),
        }
    }

    fn bars(&self, e: &Event) {
        let mut inner = self.inner.lock().expect("progress lock");
        match e {
            Event::PhaseStarted { phase, services } => {
                let bar = inner.multi.add(ProgressBar::new(services.len() as u64));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(format!("phase {phase}"));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                inner.bars.insert(*phase, bar);
                inner.current = *phase;
            }
            Event::ActionStarted { service, action } => {
                if let Some(b) = inner.bars.get(&inner.current) {
                    b.set_message(format!("{} {service}", action.as_str()));
                }
            }
            Event::ActionSucceeded { service, .. } => {
                if let Some(b) = inner.bars.get(&inner.current) {
                    b.inc(1);
                    b.set_message(format!("{service} healthy"));
                }
            }
            Event::ActionFailed {
                service, reason, ..
            } => {
                self.out.status(&format!("  {service}: failed: {reason}"));
            }
            Event::PhaseFinished {
                phase,
                ok,
                elapsed_ms,
            } => {
                if let Some(b) = inner.bars.get(phase) {
                    b.finish_with_message(format!(
                        "{} in {elapsed_ms} ms",
                        self.phase_word(*phase, *ok)
                    ));
                }
            }
            Event::Probe { .. } | Event::InstanceStarted { .. } | Event::InstanceStopped { .. } => {
            }
            other => {
                if let Some(l) = self.line(other) {
                    self.out.status(&l);
                }
            }
        }
    }
}

pub(crate) fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "applied",
        Outcome::RolledBack => "failed and rolled back",
        Outcome::RollbackFailed => "failed and the rollback did not complete",
        Outcome::Failed => "failed (not rolled back)",
        Outcome::InProgress => "in progress",
    }
}
