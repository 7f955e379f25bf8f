//! Figures and how they are shown: one [`Figure`] per measured quantity
//! (one sample per repeat, reported as median, min and max), the targets,
//! the summary table, the JSON file and the machine description.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use serde_json::{Value, json};

use crate::stats;

/// A target on a figure's median.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(target) => value >= target,
            Goal::AtMost(target) => value <= target,
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Goal::AtLeast(target) => format!("≥ {} {unit}", number(target)),
            Goal::AtMost(target) => format!("≤ {} {unit}", number(target)),
        }
    }
}

/// One measured quantity: one sample per repeat.
#[derive(Debug, Clone)]
pub struct Figure {
    pub scenario: &'static str,
    /// Stable name for the JSON file (`tasks_per_s`).
    pub key: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub goal: Option<Goal>,
}

impl Figure {
    pub fn new(
        scenario: &'static str,
        key: &'static str,
        label: impl Into<String>,
        unit: &'static str,
        samples: Vec<f64>,
    ) -> Self {
        Self {
            scenario,
            key,
            label: label.into(),
            unit,
            samples,
            goal: None,
        }
    }

    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    pub fn median(&self) -> f64 {
        stats::median(&self.samples)
    }

    pub fn met(&self) -> Option<bool> {
        self.goal.map(|goal| goal.met(self.median()))
    }

    fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "median": finite(self.median()),
            "min": finite(stats::min(&self.samples)),
            "max": finite(stats::max(&self.samples)),
            "samples": self.samples.iter().map(|&value| finite(value)).collect::<Vec<_>>(),
            "target": self.goal.map(|goal| goal.describe(self.unit)),
            "met": self.met(),
        })
    }
}

fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else {
        Value::Null
    }
}

/// Everything one invocation measured.
#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// "X = n × reference" lines.
    pub comparisons: Vec<String>,
    /// Things worth knowing about the run (skips, settings).
    pub notes: Vec<String>,
}

impl Report {
    pub fn find(&self, scenario: &str, key: &str) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|figure| figure.scenario == scenario && figure.key == key)
    }

    /// Median of a figure, if it was measured.
    pub fn median(&self, scenario: &str, key: &str) -> Option<f64> {
        self.find(scenario, key).map(Figure::median)
    }

    pub fn table(&self) -> String {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(vec![
            "scenario", "figure", "median", "min", "max", "unit", "n", "target", "met",
        ]);
        for figure in &self.figures {
            table.add_row(vec![
                figure.scenario.to_string(),
                figure.label.clone(),
                number(figure.median()),
                number(stats::min(&figure.samples)),
                number(stats::max(&figure.samples)),
                figure.unit.to_string(),
                figure.samples.len().to_string(),
                figure
                    .goal
                    .map(|goal| goal.describe(figure.unit))
                    .unwrap_or_default(),
                match figure.met() {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
            ]);
        }
        for index in 2..=6 {
            if let Some(column) = table.column_mut(index) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        table.to_string()
    }

    pub fn targets(&self) -> Vec<String> {
        self.figures
            .iter()
            .filter_map(|figure| {
                let goal = figure.goal?;
                let verdict = if goal.met(figure.median()) {
                    "met"
                } else {
                    "NOT met"
                };
                Some(format!(
                    "{verdict}: {} {}: median {} {} (target {})",
                    figure.scenario,
                    figure.label,
                    number(figure.median()),
                    figure.unit,
                    goal.describe(figure.unit)
                ))
            })
            .collect()
    }

    pub fn to_json(&self, machine: &Machine, command: &str) -> Value {
        json!({
            "machine": machine.to_json(),
            "command": command,
            "figures": self.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
            "comparisons": self.comparisons,
            "notes": self.notes,
        })
    }
}

/// A number for a table: grouped thousands for large values, a few
/// significant digits for small ones.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "-".into();
    }
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        let rounded = value.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if rounded < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// A ratio for comparison lines (`3.1`, `0.042`).
pub fn ratio(value: f64) -> String {
    if !value.is_finite() {
        "-".into()
    } else if value >= 10.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// `/proc/loadavg`'s 1, 5 and 15-minute load averages: other work on the
/// machine competes with the processes measured.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// The machine the figures were measured on.
#[derive(Debug)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub date: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("MemTotal:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu,
            kernel,
            memory_gib,
            date: chrono::Utc::now()
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB, Linux {}, {}",
            self.nproc, self.cpu, self.memory_gib, self.kernel, self.date
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "nproc": self.nproc,
            "cpu": self.cpu,
            "kernel": self.kernel,
            "memory_gib": finite(self.memory_gib),
            "date": self.date,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(number(12_345.6), "12,346");
        assert_eq!(number(1_000_000.0), "1,000,000");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(number(f64::NAN), "-");
    }

    #[test]
    fn goals_compare_the_median() {
        let figure = Figure::new("s", "k", "x", "ms", vec![1.0, 3.0, 2.0]).goal(Goal::AtMost(2.0));
        assert_eq!(figure.met(), Some(true));
        let figure = figure.goal(Goal::AtLeast(2.5));
        assert_eq!(figure.met(), Some(false));
    }
}
