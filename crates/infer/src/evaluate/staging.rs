//! Camelyon17's patient-level task over a cohort's maps: slides named `PATIENT_node_N` are
//! one patient's lymph nodes; each patient's pN stage, from its nodes' findings (the `froc`
//! crate's `staging`), goes to `stages.csv` in the challenge's submission format, and, given
//! the challenge's reference (`stage_labels.csv`), the quadratic-weighted kappa against it and
//! how many nodes' findings agree with it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use froc::staging::{Finding, Stage, quadratic_kappa};
use serde::Serialize;

/// The file, in `--out`, of each patient's stage and each node's finding.
pub const STAGES_CSV: &str = "stages.csv";

#[derive(Debug, Serialize)]
pub struct Staging {
    pub patients: Vec<PatientReport>,
    /// Quadratic-weighted Cohen's kappa of the stages against the reference's, over the
    /// patients both name; absent without a reference (or where it is undefined: every
    /// patient of one stage on both sides).
    pub kappa: Option<f64>,
    /// Patients the reference names that have no maps here: left out of the kappa.
    pub missing: Vec<String>,
    /// Nodes whose finding the reference gives, and how many of those are ours too (the
    /// slide-level accuracy Camelyon17's papers report).
    pub nodes_compared: usize,
    pub nodes_agreeing: usize,
}

#[derive(Debug, Serialize)]
pub struct PatientReport {
    pub patient: String,
    pub stage: &'static str,
    /// The reference's stage, where one was given and names the patient.
    pub reference: Option<&'static str>,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub slide: String,
    pub finding: &'static str,
    /// The reference's finding, where it gives the node's.
    pub reference: Option<&'static str>,
}

/// The patients among `slides` (each slide's stem and finding) with their stages, and the
/// `stages.csv` that says them; `None` where no slide is named as a patient's node.
pub fn stage(
    slides: &[(&str, Finding)],
    reference: Option<&Reference>,
) -> Option<(Staging, String)> {
    let mut patients: BTreeMap<&str, Vec<(&str, Finding)>> = BTreeMap::new();
    for &(stem, finding) in slides {
        if let Some(patient) = patient_of(stem) {
            patients.entry(patient).or_default().push((stem, finding));
        }
    }
    if patients.is_empty() {
        return None;
    }
    let no_reference = Reference::default();
    let reference = reference.unwrap_or(&no_reference);
    let mut csv = String::from("patient,stage\n");
    let mut reports = Vec::new();
    let mut pairs = Vec::new();
    let (mut nodes_compared, mut nodes_agreeing) = (0, 0);
    for (patient, nodes) in &patients {
        let findings: Vec<Finding> = nodes.iter().map(|&(_, finding)| finding).collect();
        let stage = Stage::of(&findings);
        let reference_stage = reference.stages.get(*patient).copied();
        if let Some(reference_stage) = reference_stage {
            pairs.push((reference_stage, stage));
        }
        csv += &format!("{patient}.zip,{}\n", stage.name());
        let mut node_reports = Vec::new();
        for &(stem, finding) in nodes {
            csv += &format!("{stem}.tif,{}\n", finding.name());
            let reference_finding = reference.finding(stem);
            if let Some(reference_finding) = reference_finding {
                nodes_compared += 1;
                nodes_agreeing += usize::from(reference_finding == finding);
            }
            node_reports.push(NodeReport {
                slide: stem.to_string(),
                finding: finding.name(),
                reference: reference_finding.map(Finding::name),
            });
        }
        reports.push(PatientReport {
            patient: patient.to_string(),
            stage: stage.name(),
            reference: reference_stage.map(Stage::name),
            nodes: node_reports,
        });
    }
    let missing = reference
        .stages
        .keys()
        .filter(|patient| !patients.contains_key(patient.as_str()))
        .cloned()
        .collect();
    let staging = Staging {
        patients: reports,
        kappa: quadratic_kappa(&pairs),
        missing,
        nodes_compared,
        nodes_agreeing,
    };
    Some((staging, csv))
}

/// The patient a slide is a node of: `patient_004` for `patient_004_node_2`.
fn patient_of(stem: &str) -> Option<&str> {
    let (patient, node) = stem.rsplit_once("_node_")?;
    let numbered = !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit());
    (!patient.is_empty() && numbered).then_some(patient)
}

/// A reference in the challenge's format.
#[derive(Default)]
pub struct Reference {
    /// Each patient's stage (lines `PATIENT.zip,STAGE`)...
    stages: BTreeMap<String, Stage>,
    /// ...and each node's finding (lines `SLIDE.tif,FINDING`), where it gives them.
    findings: BTreeMap<String, Finding>,
}

impl Reference {
    /// The reference's finding for slide `stem`, where it gives one.
    pub fn finding(&self, stem: &str) -> Option<Finding> {
        self.findings.get(stem).copied()
    }
}

/// Reads a reference; other lines (the header) are passed over.
pub fn read_reference(path: &Path) -> Result<Reference> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the reference stages", path.display()))?;
    let mut reference = Reference::default();
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split(',').map(str::trim);
        let (Some(name), Some(class)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Lowercasing ASCII keeps every byte where it was: the cut is the name's too.
        let lower = name.to_ascii_lowercase();
        let unknown = |what: &str, names: &[&str]| {
            anyhow::anyhow!(
                "{}: line {}: \"{class}\" is not a {what} ({})",
                path.display(),
                index + 1,
                names.join(", ")
            )
        };
        if let Some(patient) = lower.strip_suffix(".zip") {
            let stage = Stage::parse(class)
                .ok_or_else(|| unknown("stage", &Stage::ALL.map(Stage::name)))?;
            reference
                .stages
                .insert(name[..patient.len()].to_string(), stage);
        } else if let Some(slide) = lower.strip_suffix(".tif") {
            let finding = Finding::parse(class)
                .ok_or_else(|| unknown("finding", &Finding::ALL.map(Finding::name)))?;
            reference
                .findings
                .insert(name[..slide.len()].to_string(), finding);
        }
    }
    if reference.stages.is_empty() {
        bail!(
            "{}: no patient's stage (lines PATIENT.zip,STAGE, as Camelyon17's stage_labels.csv)",
            path.display()
        );
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides_named_as_nodes_belong_to_their_patient() {
        assert_eq!(patient_of("patient_004_node_2"), Some("patient_004"));
        assert_eq!(
            patient_of("center_1_patient_04_node_12"),
            Some("center_1_patient_04")
        );
        assert_eq!(patient_of("tumor_001"), None);
        assert_eq!(patient_of("patient_004_node_"), None);
        assert_eq!(patient_of("_node_1"), None);
    }
}
