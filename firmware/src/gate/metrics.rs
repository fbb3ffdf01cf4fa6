//! Classification metrics for the accuracy gate: confusion matrix, per-class precision /
//! recall / F1, per-stratum accuracy, and how two prediction lists disagree.
//!
//! Pure functions over class indices, so the arithmetic is tested by hand-computed cases
//! without a model. A ratio with a zero denominator is `None` (JSON `null`), not 0: a class
//! nobody predicted has no precision, and reporting 0 would read as "always wrong".

use std::collections::BTreeMap;

use serde::Serialize;

/// Index of the largest value, by [`edgedx_engine::top1`].
pub fn argmax(values: &[f32]) -> usize {
    edgedx_engine::top1(values).0
}

/// Metrics of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    /// tp / (tp + fp); `None` when nothing was predicted as this class.
    pub precision: Option<f64>,
    /// tp / (tp + fn); `None` when the class has no images (support 0).
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall; 0 when both are 0, `None` when either is undefined.
    pub f1: Option<f64>,
    /// Images whose true label is this class.
    pub support: usize,
}

/// Accuracy over the images of one stratum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StratumMetrics {
    pub stratum: String,
    pub images: usize,
    pub correct: usize,
    pub accuracy: f64,
}

/// Everything measured for one precision over the dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub images: usize,
    pub correct: usize,
    /// correct / images; 0 for an empty set (the gate refuses empty sets before this).
    pub accuracy: f64,
    pub classes: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`, in label order.
    pub confusion: Vec<Vec<usize>>,
    /// Per stratum, sorted by name; empty when the dataset has no stratum column.
    pub strata: Vec<StratumMetrics>,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Computes [`Metrics`] from true and predicted class indices. `strata[i]` is the stratum
/// of image `i` (or `None`). Indices must be `< labels.len()`: the caller validated the
/// labels and the engine checked the output width.
pub fn compute(
    labels: &[String],
    truth: &[usize],
    predicted: &[usize],
    strata: &[Option<String>],
) -> Metrics {
    assert_eq!(truth.len(), predicted.len(), "one prediction per image");
    let n = labels.len();
    let mut confusion = vec![vec![0usize; n]; n];
    for (t, p) in truth.iter().zip(predicted) {
        confusion[*t][*p] += 1;
    }
    let correct = (0..n).map(|c| confusion[c][c]).sum();
    let classes = labels
        .iter()
        .enumerate()
        .map(|(c, label)| {
            let tp = confusion[c][c];
            let support: usize = confusion[c].iter().sum();
            let predicted_as: usize = confusion.iter().map(|row| row[c]).sum();
            let precision = ratio(tp, predicted_as);
            let recall = ratio(tp, support);
            let f1 = match (precision, recall) {
                (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
            ClassMetrics {
                label: label.clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let mut by_stratum: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for ((t, p), s) in truth.iter().zip(predicted).zip(strata) {
        if let Some(s) = s {
            let entry = by_stratum.entry(s.as_str()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(t == p);
        }
    }
    Metrics {
        images: truth.len(),
        correct,
        accuracy: ratio(correct, truth.len()).unwrap_or(0.0),
        classes,
        confusion,
        strata: by_stratum
            .into_iter()
            .map(|(stratum, (images, correct))| StratumMetrics {
                stratum: stratum.to_string(),
                images,
                correct,
                accuracy: correct as f64 / images as f64,
            })
            .collect(),
    }
}

/// Number of positions where two prediction lists differ.
pub fn disagreements(a: &[usize], b: &[usize]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn hand_computed_three_classes() {
        // truth:     a a a a b b c c c c
        // predicted: a a b c b a c c c b
        // confusion (rows truth, columns predicted):
        //   a: [2, 1, 1]   b: [1, 1, 0]   c: [0, 1, 3]
        let l = labels(&["a", "b", "c"]);
        let truth = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2];
        let pred = [0, 0, 1, 2, 1, 0, 2, 2, 2, 1];
        let m = compute(&l, &truth, &pred, &vec![None; 10]);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 1], vec![1, 1, 0], vec![0, 1, 3]]
        );
        assert_eq!((m.images, m.correct), (10, 6));
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        // a: tp 2, predicted as a 3, support 4 -> p 2/3, r 1/2, f1 = 2*(1/3)/(7/6) = 4/7
        let a = &m.classes[0];
        assert!(
            close(a.precision, 2.0 / 3.0) && close(a.recall, 0.5),
            "{a:?}"
        );
        assert!(close(a.f1, 4.0 / 7.0), "{a:?}");
        assert_eq!(a.support, 4);
        // b: tp 1, predicted as b 3, support 2 -> p 1/3, r 1/2, f1 = 2/5
        let b = &m.classes[1];
        assert!(close(b.precision, 1.0 / 3.0) && close(b.recall, 0.5) && close(b.f1, 0.4));
        // c: tp 3, predicted as c 4, support 4 -> p 3/4, r 3/4, f1 3/4
        let c = &m.classes[2];
        assert!(close(c.precision, 0.75) && close(c.recall, 0.75) && close(c.f1, 0.75));
        assert!(m.strata.is_empty());
    }

    #[test]
    fn zero_support_and_never_predicted_classes_are_undefined_not_zero() {
        let l = labels(&["a", "b", "c"]);
        // No image of c; nothing predicted as b.
        let m = compute(&l, &[0, 0, 1], &[0, 0, 0], &[None, None, None]);
        let b = &m.classes[1];
        assert_eq!(b.support, 1);
        assert_eq!(b.precision, None);
        assert!(close(b.recall, 0.0));
        assert_eq!(b.f1, None);
        let c = &m.classes[2];
        assert_eq!(
            (c.support, c.precision, c.recall, c.f1),
            (0, None, None, None)
        );
        // a: p 2/3, r 1.
        assert!(close(m.classes[0].precision, 2.0 / 3.0) && close(m.classes[0].recall, 1.0));
    }

    #[test]
    fn f1_is_zero_when_a_class_is_predicted_but_never_right() {
        let l = labels(&["a", "b"]);
        let m = compute(&l, &[0, 1], &[1, 0], &[None, None]);
        for c in &m.classes {
            assert!(close(c.precision, 0.0) && close(c.recall, 0.0) && close(c.f1, 0.0));
        }
        assert_eq!(m.accuracy, 0.0);
    }

    #[test]
    fn empty_set_has_zero_accuracy_and_no_ratios() {
        let m = compute(&labels(&["a", "b"]), &[], &[], &[]);
        assert_eq!((m.images, m.accuracy), (0, 0.0));
        assert!(m.classes.iter().all(|c| c.recall.is_none()));
    }

    #[test]
    fn strata_are_counted_separately_and_sorted() {
        let l = labels(&["a", "b"]);
        let s = |x: &str| Some(x.to_string());
        let strata = [s("subtle"), s("obvious"), s("subtle"), None];
        let m = compute(&l, &[0, 1, 1, 0], &[0, 1, 0, 1], &strata);
        assert_eq!(
            m.strata,
            vec![
                StratumMetrics {
                    stratum: "obvious".into(),
                    images: 1,
                    correct: 1,
                    accuracy: 1.0
                },
                StratumMetrics {
                    stratum: "subtle".into(),
                    images: 2,
                    correct: 1,
                    accuracy: 0.5
                },
            ]
        );
    }

    #[test]
    fn argmax_ties_go_to_the_lowest_index() {
        assert_eq!(argmax(&[0.25, 0.25, 0.25, 0.25]), 0);
        assert_eq!(argmax(&[0.1, 0.4, 0.4, 0.1]), 1);
        assert_eq!(argmax(&[0.1, 0.2, 0.3, 0.4]), 3);
        assert_eq!(argmax(&[]), 0);
        // A NaN never wins, wherever it is.
        assert_eq!(argmax(&[f32::NAN, 0.1, 0.2]), 2);
        assert_eq!(argmax(&[0.3, f32::NAN, 0.2]), 0);
        assert_eq!(edgedx_engine::top1(&[f32::NAN; 3]), (0, f32::NEG_INFINITY));
    }

    #[test]
    fn disagreement_counts_positions() {
        assert_eq!(disagreements(&[0, 1, 2, 3], &[0, 2, 2, 0]), 2);
        assert_eq!(disagreements(&[], &[]), 0);
    }
}
