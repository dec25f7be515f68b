//! Fault points: named places where a test makes weir fail on purpose, to prove
//! that a crash there loses and duplicates nothing.
//!
//! A plan is a comma-separated list of `point@hit:action`, read from the
//! `WEIR_FAULTS` environment variable (or built directly in tests): `point` is a
//! name such as `sink.after_commit.raw`, `hit` is which pass through it fails
//! (1 = the first; `3-40` a range of passes, `*` every pass), and `action` is `error` (the operation returns an error, as
//! an I/O failure would), `crash` (the process aborts on the spot: no
//! destructors, no flushing, like SIGKILL), `panic` (the thread panics, as a
//! bug would: the supervisor must restart the job) or `sleep=MS` (the process stalls
//! there, so a test can let another process act in between). With no plan, a
//! check costs one look-up in an empty list.

use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Error,
    Crash,
    Panic,
    Sleep(std::time::Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Point {
    name: String,
    /// The passes it acts on, inclusive.
    hits: (u64, u64),
    action: Action,
}

/// A parsed fault plan with its hit counters; clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    points: Arc<Vec<Point>>,
    hits: Arc<Mutex<Vec<(String, u64)>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("injected fault at {0}")]
    Injected(String),
    #[error(
        "invalid fault plan entry `{0}`: expected point@hit:error|crash|panic|sleep=MS (hit: N, A-B or *)"
    )]
    Plan(String),
}

impl Faults {
    /// The plan in `WEIR_FAULTS`, or none.
    pub fn from_env() -> Result<Self, FaultError> {
        match std::env::var("WEIR_FAULTS") {
            Ok(plan) if !plan.trim().is_empty() => Self::parse(&plan),
            _ => Ok(Self::default()),
        }
    }

    pub fn parse(plan: &str) -> Result<Self, FaultError> {
        let points = plan
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let bad = || FaultError::Plan(entry.to_owned());
                let (name, rest) = entry.split_once('@').ok_or_else(bad)?;
                let (hit, action) = rest.split_once(':').ok_or_else(bad)?;
                Ok(Point {
                    name: name.to_owned(),
                    hits: parse_hits(hit).ok_or_else(bad)?,
                    action: match action.split_once('=') {
                        None if action == "error" => Action::Error,
                        None if action == "crash" => Action::Crash,
                        None if action == "panic" => Action::Panic,
                        Some(("sleep", ms)) => Action::Sleep(std::time::Duration::from_millis(
                            ms.parse().map_err(|_| bad())?,
                        )),
                        _ => return Err(bad()),
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            points: Arc::new(points),
            hits: Arc::default(),
        })
    }

    /// Passes through the point `name`: fails if the plan says this pass fails.
    pub fn check(&self, name: &str) -> Result<(), FaultError> {
        if !self.points.iter().any(|p| p.name == name) {
            return Ok(());
        }
        let hit = {
            let mut hits = self.hits.lock().unwrap();
            let entry = match hits.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry,
                None => {
                    hits.push((name.to_owned(), 0));
                    hits.last_mut().expect("just pushed")
                }
            };
            entry.1 += 1;
            entry.1
        };
        let planned = |p: &&Point| p.name == name && (p.hits.0..=p.hits.1).contains(&hit);
        match self.points.iter().find(planned) {
            Some(p) => match p.action {
                Action::Crash => {
                    eprintln!("weir: injected crash at {name} (pass {hit})");
                    std::process::abort();
                }
                Action::Panic => panic!("injected panic at {name} (pass {hit})"),
                Action::Sleep(pause) => {
                    eprintln!("weir: injected stall at {name} (pass {hit}) for {pause:?}");
                    std::thread::sleep(pause);
                    Ok(())
                }
                Action::Error => Err(FaultError::Injected(format!("{name} (pass {hit})"))),
            },
            None => Ok(()),
        }
    }
}

/// `N`, `A-B` or `*` (every pass), passes counted from 1.
fn parse_hits(text: &str) -> Option<(u64, u64)> {
    let pass = |s: &str| s.parse::<u64>().ok().filter(|h| *h > 0);
    match text.split_once('-') {
        _ if text == "*" => Some((1, u64::MAX)),
        Some((a, b)) => Some((pass(a)?, pass(b)?)).filter(|(a, b)| a <= b),
        None => pass(text).map(|h| (h, h)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_on_the_planned_pass_only() {
        let f = Faults::parse("a@2:error").unwrap();
        assert!(f.check("a").is_ok());
        assert!(f.check("b").is_ok());
        assert!(matches!(f.check("a"), Err(FaultError::Injected(_))));
        assert!(f.check("a").is_ok());
    }

    #[test]
    fn ranges_and_every_pass() {
        let f = Faults::parse("a@2-3:error,b@*:error").unwrap();
        let fails = |n: &str| f.check(n).is_err();
        assert_eq!(
            [fails("a"), fails("a"), fails("a"), fails("a")],
            [false, true, true, false]
        );
        assert!(fails("b") && fails("b"));
    }

    #[test]
    fn bad_plans_are_refused() {
        for plan in [
            "a",
            "a@x:error",
            "a@0:error",
            "a@1:explode",
            "a@1:sleep=x",
            "a@3-2:error",
        ] {
            assert!(Faults::parse(plan).is_err(), "{plan}");
        }
        assert!(Faults::parse("").unwrap().check("a").is_ok());
        assert!(Faults::parse("a@1:sleep=1").unwrap().check("a").is_ok());
    }
}
