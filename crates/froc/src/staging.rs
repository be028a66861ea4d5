//! Camelyon17's patient-level task: each lymph node (a slide) classed by its largest
//! metastasis, each patient's pN stage from its nodes, and the quadratic-weighted Cohen's
//! kappa between two stagings (the challenge's `evaluation.py`: scikit-learn's
//! `cohen_kappa_score(weights="quadratic")` over the five stages).
//!
//! The challenge's definitions (after the AJCC's): a macro-metastasis is larger than 2.0 mm; a
//! micro-metastasis larger than 0.2 mm and not larger than 2.0 mm; isolated tumour cells not
//! larger than 0.2 mm. pN0: no micro- or macro-metastases or isolated tumour cells found;
//! pN0(i+): only isolated tumour cells; pN1mi: micro-metastases, but no macro-metastases;
//! pN1: metastases in 1-3 nodes, at least one a macro-metastasis; pN2: metastases in 4-9
//! nodes, at least one a macro-metastasis.

use crate::Plane;
use crate::lesions::{label_8_connected, major_axes};

/// A metastasis larger than this is a macro-metastasis...
pub const MACRO_MM: f64 = 2.0;
/// ...and one larger than this, a micro-metastasis; smaller ones are isolated tumour cells.
pub const MICRO_MM: f64 = 0.2;

/// What a lymph node holds, by its largest metastasis, in increasing severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    Negative,
    IsolatedTumourCells,
    Micro,
    Macro,
}

impl Finding {
    pub const ALL: [Finding; 4] = [
        Finding::Negative,
        Finding::IsolatedTumourCells,
        Finding::Micro,
        Finding::Macro,
    ];

    /// A node whose largest metastasis measures `largest_mm` (`None`: no tumour at all).
    pub fn from_largest(largest_mm: Option<f64>) -> Finding {
        match largest_mm {
            None => Finding::Negative,
            Some(mm) if mm > MACRO_MM => Finding::Macro,
            Some(mm) if mm > MICRO_MM => Finding::Micro,
            Some(_) => Finding::IsolatedTumourCells,
        }
    }

    /// As Camelyon17's `stage_labels.csv` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Finding::Negative => "negative",
            Finding::IsolatedTumourCells => "itc",
            Finding::Micro => "micro",
            Finding::Macro => "macro",
        }
    }

    /// A finding by its name, in any case.
    pub fn parse(name: &str) -> Option<Finding> {
        Finding::ALL
            .into_iter()
            .find(|finding| finding.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// The size of the largest metastasis, in pixels: the longest major axis among the
/// 8-connected regions of `tumour` (that of the ellipse with a region's second moments, as
/// Camelyon16's evaluation measures lesions); `None` without tumour.
pub fn largest_metastasis(tumour: Plane<bool>) -> Option<f64> {
    let Plane {
        width,
        height,
        values,
    } = tumour;
    assert_eq!(values.len(), width * height);
    let labels = label_8_connected(values, width, height);
    major_axes(&labels, width).into_iter().reduce(f64::max)
}

/// A patient's pathological lymph-node stage, as Camelyon17 grades it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    N0,
    N0IsolatedTumourCells,
    N1Micro,
    N1,
    N2,
}

impl Stage {
    /// In the challenge's order, which the kappa's weights follow.
    pub const ALL: [Stage; 5] = [
        Stage::N0,
        Stage::N0IsolatedTumourCells,
        Stage::N1Micro,
        Stage::N1,
        Stage::N2,
    ];

    /// The stage of a patient whose nodes hold `nodes`. Camelyon17's patients have five
    /// nodes; ten or more with metastases (the AJCC's pN3) stay pN2 here, the challenge's
    /// highest stage.
    pub fn of(nodes: &[Finding]) -> Stage {
        let metastases = nodes.iter().filter(|&&f| f >= Finding::Micro).count();
        if nodes.contains(&Finding::Macro) {
            if metastases >= 4 {
                Stage::N2
            } else {
                Stage::N1
            }
        } else if metastases > 0 {
            Stage::N1Micro
        } else if nodes.contains(&Finding::IsolatedTumourCells) {
            Stage::N0IsolatedTumourCells
        } else {
            Stage::N0
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::N0 => "pN0",
            Stage::N0IsolatedTumourCells => "pN0(i+)",
            Stage::N1Micro => "pN1mi",
            Stage::N1 => "pN1",
            Stage::N2 => "pN2",
        }
    }

    /// A stage by its name, in any case (the challenge's evaluation lowercases both sides).
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Cohen's kappa with quadratic weights between `(reference, predicted)` stages: one less the
/// weighted disagreement over the disagreement the two sides' stage frequencies would give
/// by chance, the weight of a pair of stages the square of their distance in [`Stage::ALL`].
/// `None` without pairs, or where chance disagreement is nil (both sides one stage).
pub fn quadratic_kappa(pairs: &[(Stage, Stage)]) -> Option<f64> {
    const N: usize = Stage::ALL.len();
    let mut observed = [[0.0f64; N]; N];
    let (mut reference, mut predicted) = ([0.0f64; N], [0.0f64; N]);
    for &(r, p) in pairs {
        observed[r as usize][p as usize] += 1.0;
        reference[r as usize] += 1.0;
        predicted[p as usize] += 1.0;
    }
    let total = pairs.len() as f64;
    let (mut disagreement, mut by_chance) = (0.0, 0.0);
    for i in 0..N {
        for j in 0..N {
            let weight = ((i as f64) - (j as f64)).powi(2);
            disagreement += weight * observed[i][j];
            by_chance += weight * reference[i] * predicted[j] / total;
        }
    }
    (total > 0.0 && by_chance > 0.0).then(|| 1.0 - disagreement / by_chance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Finding::{IsolatedTumourCells as Itc, Macro, Micro, Negative};

    #[test]
    fn findings_by_size_at_the_challenges_bounds() {
        assert_eq!(Finding::from_largest(None), Negative);
        assert_eq!(Finding::from_largest(Some(0.0)), Itc);
        assert_eq!(Finding::from_largest(Some(0.2)), Itc);
        assert_eq!(Finding::from_largest(Some(0.21)), Micro);
        assert_eq!(Finding::from_largest(Some(2.0)), Micro);
        assert_eq!(Finding::from_largest(Some(2.01)), Macro);
        assert_eq!(Finding::parse(" ITC"), Some(Itc));
        assert_eq!(Finding::parse("tumour"), None);
    }

    /// The challenge's five definitions, one case each, and their edges: metastases are
    /// micro or macro (isolated tumour cells do not count), and only a macro-metastasis makes
    /// pN1 or pN2.
    #[test]
    fn stages_follow_the_challenges_definitions() {
        let stage = |nodes: &[Finding]| Stage::of(nodes).name();
        assert_eq!(stage(&[Negative; 5]), "pN0");
        assert_eq!(stage(&[Itc, Negative, Itc, Negative, Negative]), "pN0(i+)");
        assert_eq!(stage(&[Micro, Itc, Negative, Negative, Negative]), "pN1mi");
        assert_eq!(stage(&[Micro, Micro, Micro, Micro, Micro]), "pN1mi");
        assert_eq!(
            stage(&[Macro, Negative, Negative, Negative, Negative]),
            "pN1"
        );
        assert_eq!(stage(&[Macro, Micro, Micro, Itc, Itc]), "pN1");
        assert_eq!(stage(&[Macro, Micro, Micro, Micro, Negative]), "pN2");
        assert_eq!(stage(&[]), "pN0");
        assert_eq!(Stage::parse("PN0(I+)"), Some(Stage::N0IsolatedTumourCells));
        assert_eq!(Stage::parse("pN3"), None);
    }

    #[test]
    fn kappa_is_one_on_agreement_and_undefined_without_spread() {
        let pairs: Vec<(Stage, Stage)> = Stage::ALL.iter().map(|&s| (s, s)).collect();
        assert_eq!(quadratic_kappa(&pairs), Some(1.0));
        assert_eq!(quadratic_kappa(&[(Stage::N1, Stage::N1)]), None);
        assert_eq!(quadratic_kappa(&[]), None);
    }
}
