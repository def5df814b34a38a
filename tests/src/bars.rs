//! The benchmarks' bars: each benchmark checks its figures against its bars
//! here, prints a verdict per bar, and exits non-zero when one is missed, so
//! a bar is a bar.
//!
//! - `FERRY_BENCH_FIGURES_ONLY=1`: print the figures and verdicts, exit 0
//!   whatever they are (for measuring on a loaded machine).
//! - `FERRY_BENCH_BAR_SCALE=F`: every bar multiplied by `F` (a positive
//!   number); `0.001` puts every bar out of reach, to see a missed bar fail
//!   the run.

use std::collections::BTreeMap;

/// Prints the figures and verdicts but exits 0 whatever they are.
pub const FIGURES_ONLY_VAR: &str = "FERRY_BENCH_FIGURES_ONLY";
/// Multiplies every bar (`0.001`: every bar out of reach).
pub const BAR_SCALE_VAR: &str = "FERRY_BENCH_BAR_SCALE";

/// One bar, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// What was measured, as printed.
    pub what: String,
    /// The figure.
    pub measured: f64,
    /// The bar it had to stay at or under, after scaling.
    pub bar: f64,
    /// Whether it did.
    pub met: bool,
}

/// A benchmark's bars and how they went.
#[derive(Debug)]
pub struct Bars {
    bench: String,
    figures_only: bool,
    scale: f64,
    verdicts: Vec<Verdict>,
}

impl Bars {
    /// The bars of `bench`, set from the process's environment.
    pub fn from_env(bench: &str) -> Result<Bars, String> {
        let vars: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k == FIGURES_ONLY_VAR || k == BAR_SCALE_VAR)
            .collect();
        Bars::from_vars(bench, &vars)
    }

    /// The bars of `bench`, set from `vars` (the environment, or a test's map).
    pub fn from_vars(bench: &str, vars: &BTreeMap<String, String>) -> Result<Bars, String> {
        let figures_only = match vars.get(FIGURES_ONLY_VAR).map(String::as_str) {
            None | Some("") | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(format!("{FIGURES_ONLY_VAR} must be 0 or 1, not {other:?}")),
        };
        let scale = match vars.get(BAR_SCALE_VAR) {
            None => 1.0,
            Some(text) => match text.parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 => f,
                _ => {
                    return Err(format!(
                        "{BAR_SCALE_VAR} must be a positive number, not {text:?}"
                    ))
                }
            },
        };
        Ok(Bars {
            bench: bench.to_owned(),
            figures_only,
            scale,
            verdicts: Vec::new(),
        })
    }

    /// Checks that `measured` is at most `bar` (scaled), prints the verdict
    /// and returns whether it was met.
    pub fn at_most(&mut self, what: &str, measured: f64, bar: f64) -> bool {
        let bar = bar * self.scale;
        let met = measured <= bar;
        println!(
            "{}: bar: {what} {measured:.3} at most {bar:.3}: {}",
            self.bench,
            if met { "met" } else { "MISSED" }
        );
        self.verdicts.push(Verdict {
            what: what.to_owned(),
            measured,
            bar,
            met,
        });
        met
    }

    /// The verdicts so far.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    /// The exit code the run ends with: 1 when a bar was missed (unless
    /// figures only) or none was checked, else 0.
    pub fn exit_code(&self) -> i32 {
        let missed = self.verdicts.iter().filter(|v| !v.met).count();
        if self.figures_only || (missed == 0 && !self.verdicts.is_empty()) {
            0
        } else {
            1
        }
    }

    /// Prints the summary and ends the process with [`Bars::exit_code`].
    pub fn finish(self) -> ! {
        let missed: Vec<&str> = self
            .verdicts
            .iter()
            .filter(|v| !v.met)
            .map(|v| v.what.as_str())
            .collect();
        let code = self.exit_code();
        if self.verdicts.is_empty() {
            eprintln!("{}: no bar was checked", self.bench);
        } else if missed.is_empty() {
            println!("{}: every bar met", self.bench);
        } else if self.figures_only {
            println!(
                "{}: bars missed ({}), ignored ({FIGURES_ONLY_VAR}=1)",
                self.bench,
                missed.join("; ")
            );
        } else {
            eprintln!("{}: bars missed: {}", self.bench, missed.join("; "));
        }
        std::process::exit(code)
    }
}

/// The bars of `bench` from the environment; a bad setting ends the process
/// at once (exit 64), before a benchmark runs for minutes.
pub fn bars_or_exit(bench: &str) -> Bars {
    match Bars::from_env(bench) {
        Ok(bars) => bars,
        Err(why) => {
            eprintln!("{bench}: {why}");
            std::process::exit(64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_met_bar_exits_0_and_a_missed_one_exits_1() {
        let mut bars = Bars::from_vars("b", &vars(&[])).unwrap();
        assert!(bars.at_most("ratio", 1.9, 2.0));
        assert_eq!(bars.exit_code(), 0);
        assert!(!bars.at_most("rss", 11.0, 10.0));
        assert_eq!(bars.exit_code(), 1);
        assert_eq!(bars.verdicts().len(), 2);
    }

    #[test]
    fn a_bar_scaled_out_of_reach_is_missed_and_fails_the_run() {
        let mut bars = Bars::from_vars("b", &vars(&[(BAR_SCALE_VAR, "0.001")])).unwrap();
        assert!(!bars.at_most("ratio", 1.2, 2.0));
        assert_eq!(bars.verdicts()[0].bar, 0.002);
        assert_eq!(bars.exit_code(), 1);
    }

    #[test]
    fn figures_only_exits_0_with_a_missed_bar() {
        let mut bars = Bars::from_vars(
            "b",
            &vars(&[(FIGURES_ONLY_VAR, "1"), (BAR_SCALE_VAR, "0.001")]),
        )
        .unwrap();
        assert!(!bars.at_most("ratio", 1.2, 2.0));
        assert_eq!(bars.exit_code(), 0);
    }

    #[test]
    fn a_run_that_checked_no_bar_fails() {
        let bars = Bars::from_vars("b", &vars(&[])).unwrap();
        assert_eq!(bars.exit_code(), 1);
    }

    #[test]
    fn bad_settings_are_refused_with_the_variable_named() {
        for (k, v) in [
            (BAR_SCALE_VAR, "0"),
            (BAR_SCALE_VAR, "-1"),
            (BAR_SCALE_VAR, "x"),
            (BAR_SCALE_VAR, "inf"),
            (FIGURES_ONLY_VAR, "yes"),
        ] {
            let err = Bars::from_vars("b", &vars(&[(k, v)])).unwrap_err();
            assert!(err.contains(k), "{err}");
        }
    }
}
