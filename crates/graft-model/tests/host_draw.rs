//! Issue 27, item 2: initial weights are the CPU generator's draws for a seed, whatever device
//! the model is built for. A test binary of its own: the backend's generator is global to the
//! process, and the crate's unit tests draw from it in parallel.
//!
//! The only devices here are CPU ones, so the "other device" is the autodiff CPU device: the
//! builder must be handed the plain host, and the model it returns must be on the target
//! device with exactly the host's draws.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::LinearConfig;
use burn::tensor::{Device, Tensor};
use graft_graph::{Edge, Graph, Placement};
use graft_model::{AdapterConfig, Trainable, Vit, VitConfig};

/// Every parameter's values, in module order, with whether it is on an autodiff device.
fn params(module: &impl Module) -> Vec<(Vec<f32>, bool)> {
    struct Collect(Vec<(Vec<f32>, bool)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let ad = t.is_autodiff();
            self.0
                .push((t.into_data().try_to_vec::<f32>().unwrap(), ad));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

fn model(device: &Device, seed: u64) -> Vit {
    graft_backend::seed(device, seed);
    let placement = Placement::new(Graph::new(2), [Edge::new(0, 1), Edge::new(4, 1)]).unwrap();
    VitConfig::preset("vit-cpu-tiny", 5)
        .unwrap()
        .init(device)
        .with_placement(&placement, &AdapterConfig::new())
        .unwrap()
}

#[test]
fn weights_are_drawn_on_the_cpu_and_moved_to_the_device() {
    let host = graft_backend::host();
    let target = graft_backend::device("cpu").unwrap().autodiff();

    // The builder is handed the host, and what it builds arrives on the target.
    let mut handed = None;
    let linear = graft_model::on_host(&target, |d| {
        handed = Some((d.clone(), d.is_autodiff()));
        LinearConfig::new(4, 3).init(d)
    });
    assert_eq!(handed, Some((host.clone(), false)));
    assert!(linear.weight.val().is_autodiff());

    // The ViT and its adapters for the target are the host's draws for the seed, on the
    // target (every parameter), and trainable there.
    let on_target = params(&model(&target, 5));
    let on_host = params(&model(&host, 5));
    assert_eq!(on_target.len(), on_host.len());
    assert!(on_target.iter().all(|(_, ad)| *ad));
    assert!(on_host.iter().all(|(_, ad)| !*ad));
    for (k, ((a, _), (b, _))) in on_target.iter().zip(&on_host).enumerate() {
        assert_eq!(a, b, "parameter {k} differs from the CPU draw");
    }
    // Another seed, other weights: the comparison above can fail.
    assert_ne!(params(&model(&host, 6))[0].0, on_host[0].0);

    // Built for the autodiff device, the model trains there: gradients reach its parameters.
    let m = model(&target, 5).with_trainable(Trainable::Full);
    let x = Tensor::<4>::ones([1, 3, 16, 16], &target);
    let grads = m.forward(x).sum().backward();
    assert!(m.blocks[0].mlp.fc1.weight.val().grad(&grads).is_some());
    assert!(m.adapters[0].down.weight.val().grad(&grads).is_some());
}
