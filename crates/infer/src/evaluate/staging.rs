//! Camelyon17's patient-level task over a cohort's maps: slides named `PATIENT_node_N` are
//! one patient's lymph nodes; each patient's pN stage, from its nodes' findings (the `froc`
//! crate's `staging`), goes to `stages.csv` in the challenge's submission format, and, given
//! the challenge's reference (`stage_labels.csv`), the quadratic-weighted kappa against it.

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
}

#[derive(Debug, Serialize)]
pub struct PatientReport {
    pub patient: String,
    pub nodes: usize,
    pub stage: &'static str,
    /// The reference's stage, where one was given and names the patient.
    pub reference: Option<&'static str>,
}

/// The patients among `slides` (each slide's stem and finding) with their stages, and the
/// `stages.csv` that says them; `None` where no slide is named as a patient's node.
pub fn stage(
    slides: &[(&str, Finding)],
    reference: Option<&Path>,
) -> Result<Option<(Staging, String)>> {
    let mut patients: BTreeMap<&str, Vec<(&str, Finding)>> = BTreeMap::new();
    for &(stem, finding) in slides {
        if let Some(patient) = patient_of(stem) {
            patients.entry(patient).or_default().push((stem, finding));
        }
    }
    if patients.is_empty() {
        return Ok(None);
    }
    let reference = reference.map(read_reference).transpose()?;
    let mut csv = String::from("patient,stage\n");
    let mut reports = Vec::new();
    let mut pairs = Vec::new();
    for (patient, nodes) in &patients {
        let findings: Vec<Finding> = nodes.iter().map(|&(_, finding)| finding).collect();
        let stage = Stage::of(&findings);
        let expected = reference.as_ref().and_then(|r| r.get(*patient)).copied();
        if let Some(expected) = expected {
            pairs.push((expected, stage));
        }
        csv += &format!("{patient}.zip,{}\n", stage.name());
        for (stem, finding) in nodes {
            csv += &format!("{stem}.tif,{}\n", finding.name());
        }
        reports.push(PatientReport {
            patient: patient.to_string(),
            nodes: nodes.len(),
            stage: stage.name(),
            reference: expected.map(Stage::name),
        });
    }
    let missing = reference
        .iter()
        .flat_map(|r| r.keys())
        .filter(|patient| !patients.contains_key(patient.as_str()))
        .cloned()
        .collect();
    let staging = Staging {
        patients: reports,
        kappa: quadratic_kappa(&pairs),
        missing,
    };
    Ok(Some((staging, csv)))
}

/// The patient a slide is a node of: `patient_004` for `patient_004_node_2`.
fn patient_of(stem: &str) -> Option<&str> {
    let (patient, node) = stem.rsplit_once("_node_")?;
    let numbered = !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit());
    (!patient.is_empty() && numbered).then_some(patient)
}

/// Each patient's stage in a reference in the challenge's format: lines `PATIENT.zip,STAGE`
/// (other lines, the header and the nodes' `SLIDE.tif,FINDING`, are passed over).
fn read_reference(path: &Path) -> Result<BTreeMap<String, Stage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the reference stages", path.display()))?;
    let mut stages = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split(',').map(str::trim);
        let (Some(name), Some(stage)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Lowercasing ASCII keeps every byte where it was: the cut is the name's too.
        let Some(patient) = name
            .to_ascii_lowercase()
            .strip_suffix(".zip")
            .map(|lower| name[..lower.len()].to_string())
        else {
            continue;
        };
        let Some(stage) = Stage::parse(stage) else {
            bail!(
                "{}: line {}: \"{stage}\" is not a stage (pN0, pN0(i+), pN1mi, pN1, pN2)",
                path.display(),
                index + 1
            );
        };
        stages.insert(patient, stage);
    }
    if stages.is_empty() {
        bail!(
            "{}: no patient's stage (lines PATIENT.zip,STAGE, as Camelyon17's stage_labels.csv)",
            path.display()
        );
    }
    Ok(stages)
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
