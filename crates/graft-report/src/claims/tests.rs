//! The claims' statistics on runs tables where the truth is planted: replicates generated
//! with a known effect (or none), read by the report's own analysis, and the claims checked
//! against the truth.

use graft_graph::{Edge, EdgeKind, Graph, Placement};
use graft_tables::{Method, ProbeRow, ProposalRow, RunRow, RunStatus, edge_rows};

use super::{Claim, ClaimRow, Claims, Verdict, claims};
use crate::analysis::analyse;
use crate::inputs::TaskData;

/// splitmix64 with Box–Muller normals: a fixed stream per test.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// What a generated replicate plants.
#[derive(Clone, Copy)]
struct Plant {
    /// Pearson correlation of the frobenius score with an edge's true accuracy; its
    /// Spearman is (6/π) asin(r/2).
    score_r: f64,
    /// Standard deviation of the edges' true accuracies (points).
    edge_sd: f64,
    /// Seed noise of one run (points).
    seed_sd: f64,
    /// gga with 3 adapters minus parallel-all (points), true.
    gga_gain: f64,
}

const GRAPH_LAYERS: usize = 4;
const SEEDS: [i64; 3] = [0, 1, 2];

/// 24 sweep edges, 6 of each kind, the same on every replicate.
fn sweep_edges(g: Graph) -> Vec<Edge> {
    EdgeKind::ALL
        .iter()
        .flat_map(|&k| g.edges_of(k).take(6))
        .collect()
}

fn run(placement: &Placement, method: Method, seed: i64, acc: f64, status: RunStatus) -> RunRow {
    let ok = status.is_ok();
    RunRow {
        placement_id: if method == Method::Adapters {
            placement.id()
        } else {
            method.name().to_owned()
        },
        method,
        protocol: Some("select".into()),
        seed,
        edges: edge_rows(placement),
        adapters: placement.len() as i64,
        trainable_params: 1000 * placement.len() as i64,
        forward_flops: 1,
        status,
        error: (!ok).then(|| "loss is NaN at epoch 3".into()),
        best_epoch: ok.then_some(2),
        val_accuracy: ok.then_some(acc / 100.0),
        test_accuracy: ok.then_some(acc / 100.0),
        train_loss: ok.then_some(0.5),
        backend: "flex".into(),
        device: "cpu".into(),
        run_artifact: "a".repeat(64),
        weights_file: None,
    }
}

fn proposal(placement: &Placement, heuristic: &str, label: &str, budgeted: bool) -> ProposalRow {
    ProposalRow {
        placement_id: placement.id(),
        heuristic: heuristic.into(),
        label: label.into(),
        params: "{}".into(),
        budgeted,
        score: None,
        budget: placement.len() as i64,
        draw: 0,
        method: Method::Adapters,
        edges: edge_rows(placement),
        adapters: placement.len() as i64,
        trainable_params: 1000 * placement.len() as i64,
        forward_flops: 1,
    }
}

fn probe_row(e: Edge, frobenius: f64) -> ProbeRow {
    ProbeRow {
        i: e.i as i32,
        j: e.j as i32,
        kind: e.kind().name().into(),
        rank: 1,
        frobenius,
        spectral: 1.0,
        nuclear: 1.0,
        stable_rank: 1.0,
        effective_rank: 1.0,
        singular_values: vec![1.0],
    }
}

/// One replicate: the sweep (every edge at seed 0, the first 6 at seeds 0-2), gga with 3
/// adapters and parallel-all at seeds 0-2, and the probe's frobenius score.
fn replicate(rng: &mut Rng, p: Plant, task: &str) -> TaskData {
    let g = Graph::new(GRAPH_LAYERS);
    let (mut runs, mut proposals, mut probe) = (Vec::new(), Vec::new(), Vec::new());
    for (k, e) in sweep_edges(g).into_iter().enumerate() {
        let (z, w) = (rng.normal(), rng.normal());
        let truth = 70.0 + p.edge_sd * (p.score_r * z + (1.0 - p.score_r.powi(2)).sqrt() * w);
        probe.push(probe_row(e, z));
        let pl = Placement::new(g, [e]).unwrap();
        proposals.push(proposal(
            &pl,
            graft_tables::SWEEP_HEURISTIC,
            "single-sweep",
            false,
        ));
        let seeds: &[i64] = if k % 4 == 0 { &SEEDS } else { &SEEDS[..1] };
        for &s in seeds {
            let acc = truth + p.seed_sd * rng.normal();
            runs.push(run(&pl, Method::Adapters, s, acc, RunStatus::Ok));
        }
    }
    let pa = g.parallel_all();
    let gga = Placement::new(g, [Edge::new(0, 3), Edge::new(2, 5), Edge::new(6, 1)]).unwrap();
    proposals.push(proposal(&pa, "parallel-all", "parallel-all", false));
    proposals.push(proposal(&gga, "gga", "gga γ=0.6", true));
    for &s in &SEEDS {
        // A shared per-seed effect (the seed's data order) that pairing removes.
        let shared = rng.normal();
        let pa_acc = 75.0 + shared + p.seed_sd * rng.normal();
        let gga_acc = 75.0 + p.gga_gain + shared + p.seed_sd * rng.normal();
        runs.push(run(&pa, Method::Adapters, s, pa_acc, RunStatus::Ok));
        runs.push(run(&gga, Method::Adapters, s, gga_acc, RunStatus::Ok));
    }
    TaskData {
        task: task.into(),
        probe,
        runs,
        proposals,
        ..TaskData::default()
    }
}

/// `k` replicates (backbones) of one task.
fn backbones(rng: &mut Rng, p: Plant, k: usize) -> Claims {
    let tasks = (0..k)
        .map(|b| replicate(rng, p, "textures").of_replicate("backbone", &b.to_string()))
        .collect();
    claims(&analyse(tasks))
}

fn row<'a>(c: &'a Claims, claim: Claim, comparison: &str) -> &'a ClaimRow {
    c.rows
        .iter()
        .find(|r| r.claim == claim && r.comparison.starts_with(comparison))
        .unwrap_or_else(|| panic!("no {claim:?} row {comparison:?}: {:#?}", c.rows))
}

/// Spearman 0.6 for a bivariate normal: r = 2 sin(π 0.6 / 6).
fn r_for_spearman(rho: f64) -> f64 {
    2.0 * (std::f64::consts::PI * rho / 6.0).sin()
}

const NULL_PLANT: Plant = Plant {
    score_r: 0.0,
    edge_sd: 0.0,
    seed_sd: 1.0,
    gga_gain: 0.0,
};

#[test]
fn five_backbones_with_a_planted_correlation_cover_it_and_hold() {
    let mut rng = Rng(7);
    let p = Plant {
        score_r: r_for_spearman(0.6),
        edge_sd: 5.0,
        seed_sd: 0.5,
        gga_gain: 0.0,
    };
    let c = backbones(&mut rng, p, 5);
    let r = row(&c, Claim::C2, "frobenius");
    assert_eq!(r.estimates.len(), 5);
    let pooled = r.pooled.expect("five backbones pool");
    assert!(pooled.lo < 0.6 && 0.6 < pooled.hi, "{pooled:?}");
    assert_eq!(r.verdict, Verdict::Holds, "{r:#?}");
    assert!(r.pooled_basis.contains("5 backbones"), "{}", r.pooled_basis);
    assert_eq!(c.axis, "backbone");
    // Edges differ by 5 points against 0.5 of seed noise: placement matters.
    assert_eq!(row(&c, Claim::C1, "share").verdict, Verdict::Holds);
}

/// With no effect anywhere, the pooled 95 % intervals cover the truth (0) in 93-97 % of
/// 2000 simulated five-backbone studies: a paired difference (C4), a correlation (C2) and
/// the sweep's share of variance from the edge (C1, whose truth is 0 % with equal edges).
#[test]
fn no_effect_gives_cannot_tell_at_the_nominal_rate() {
    let mut rng = Rng(11);
    let studies = 2000;
    let mut covered = [0usize; 3];
    for _ in 0..studies {
        let c = backbones(&mut rng, NULL_PLANT, 5);
        let rows = [
            row(&c, Claim::C4, "gga γ=0.6 vs parallel-all, 3 adapters"),
            row(&c, Claim::C2, "frobenius"),
            row(&c, Claim::C1, "share"),
        ];
        for (k, r) in rows.iter().enumerate() {
            let p = r.pooled.expect("five backbones pool");
            if p.lo <= 0.0 && 0.0 <= p.hi {
                covered[k] += 1;
            }
        }
    }
    for (k, name) in ["C4 difference", "C2 correlation", "C1 share"]
        .iter()
        .enumerate()
    {
        let rate = covered[k] as f64 / studies as f64;
        assert!((0.93..=0.97).contains(&rate), "{name}: coverage {rate}");
    }
}

#[test]
fn one_replicate_gives_no_pooled_interval_and_says_so() {
    let mut rng = Rng(3);
    let p = Plant {
        gga_gain: 5.0,
        ..NULL_PLANT
    };
    let c = backbones(&mut rng, p, 1);
    let r = row(&c, Claim::C4, "gga");
    assert!(r.pooled.is_none());
    assert!(
        r.pooled_basis.contains("one backbone: no pooled interval"),
        "{}",
        r.pooled_basis
    );
    // The verdict is the one backbone's own, from its paired interval.
    assert_eq!(r.verdict, r.estimates[0].verdict);
    assert!(crate::claims::markdown(&c).contains("none"));
}

#[test]
fn a_replicate_with_a_failed_run_is_named_and_left_out() {
    let mut rng = Rng(5);
    let mut tasks: Vec<TaskData> = (0..4)
        .map(|b| {
            replicate(&mut rng, NULL_PLANT, "textures").of_replicate("backbone", &b.to_string())
        })
        .collect();
    let r = tasks[2].runs.iter_mut().find(|r| r.seed == 1).unwrap();
    r.status = RunStatus::Diverged;
    r.test_accuracy = None;
    r.error = Some("loss is NaN at epoch 3".into());
    let c = claims(&analyse(tasks));
    assert_eq!(c.left_out.len(), 1, "{:?}", c.left_out);
    let (who, why) = &c.left_out[0];
    assert_eq!(who, "textures (backbone 2)");
    assert!(why.contains("1 of") && why.contains("diverged"), "{why}");
    let r = row(&c, Claim::C4, "gga");
    assert_eq!(r.estimates.len(), 3);
    assert!(r.estimates.iter().all(|e| e.replicate != "backbone 2"));
    let md = crate::claims::markdown(&c);
    assert!(
        md.contains("Left out of every claim: textures (backbone 2)"),
        "{md}"
    );
}

/// C6 per backbone: two tasks whose maps share the edges' truth correlate; two that do not,
/// do not; the pooled verdict follows against ρ = 0.5.
#[test]
fn task_dependence_pairs_tasks_within_each_backbone() {
    let mut rng = Rng(17);
    let p = Plant {
        score_r: 0.0,
        edge_sd: 5.0,
        seed_sd: 0.3,
        gga_gain: 0.0,
    };
    let mut tasks = Vec::new();
    for b in 0..5 {
        for t in ["textures", "colours"] {
            tasks.push(replicate(&mut rng, p, t).of_replicate("backbone", &b.to_string()));
        }
    }
    let c = claims(&analyse(tasks));
    let r = row(&c, Claim::C6, "single-adapter maps");
    assert_eq!(r.scope, "textures vs colours");
    assert_eq!(r.estimates.len(), 5);
    // Independent maps: ρ near 0, wholly below 0.5 pooled.
    assert_eq!(r.verdict, Verdict::Holds, "{r:#?}");
    // C1-C5 are per task: textures and colours each pool over the five backbones.
    let scopes: Vec<&str> = c
        .rows
        .iter()
        .filter(|r| r.claim == Claim::C4)
        .map(|r| r.scope.as_str())
        .collect();
    assert_eq!(scopes, ["textures", "colours"]);
}

/// Without a replicate axis the task is the replicate, and the note says the verdicts are
/// about one backbone and names the replicates pipeline.
#[test]
fn tasks_as_replicates_say_they_speak_for_one_backbone() {
    let mut rng = Rng(19);
    let tasks = ["a", "b", "c"]
        .iter()
        .map(|t| replicate(&mut rng, NULL_PLANT, t))
        .collect();
    let c = claims(&analyse(tasks));
    assert_eq!(c.axis, "task");
    assert!(c.note.contains("one pretrained backbone") && c.note.contains("TASK=replicates"));
    let r = row(&c, Claim::C6, "single-adapter maps");
    assert_eq!(r.estimates.len(), 3, "three pairs of three tasks");
    assert!(
        r.pooled_basis.starts_with("jackknife over tasks"),
        "{}",
        r.pooled_basis
    );
}

#[test]
fn expected_max_over_subsets_by_hand() {
    // Subsets of 2 of {1, 2, 3}: maxima 2, 3, 3: mean 8/3.
    let m = super::estimates::expected_max(&[3.0, 1.0, 2.0], 2).unwrap();
    assert!((m - 8.0 / 3.0).abs() < 1e-12, "{m}");
    assert_eq!(super::estimates::expected_max(&[1.0, 5.0], 2), Some(5.0));
    assert_eq!(super::estimates::expected_max(&[1.0], 2), None);
}

#[test]
fn verdicts_read_the_interval_against_the_claims_null() {
    assert_eq!(Verdict::of(Claim::C4, Some((0.1, 2.0))), Verdict::Holds);
    assert_eq!(
        Verdict::of(Claim::C4, Some((-2.0, -0.1))),
        Verdict::DoesNotHold
    );
    assert_eq!(
        Verdict::of(Claim::C4, Some((-0.1, 2.0))),
        Verdict::CannotTell
    );
    assert_eq!(Verdict::of(Claim::C4, None), Verdict::CannotTell);
    assert_eq!(Verdict::of(Claim::C6, Some((-0.2, 0.4))), Verdict::Holds);
    assert_eq!(
        Verdict::of(Claim::C6, Some((0.6, 0.9))),
        Verdict::DoesNotHold
    );
    assert_eq!(
        Verdict::of(Claim::C6, Some((0.3, 0.7))),
        Verdict::CannotTell
    );
}
