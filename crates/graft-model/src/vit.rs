use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Gradients;
use burn::tensor::activation::{gelu, relu, sigmoid};
use burn::tensor::{DType, Device, Tensor};
use graft_backend::fused::attention;
use graft_graph::{Edge, EdgeKind, Placement, PlainStart};

use crate::{
    AdapterAct, AdapterConfig, LoraConfig, MlpAct, ModelError, Precision, Trainable, VitConfig,
};

/// Patch embedding: a p x p convolution with stride p.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl PatchEmbed {
    /// # Shapes
    /// images `[batch, channels, height, width]` -> tokens `[batch, patches, dim]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<3> {
        let x = self.proj.forward(images); // [batch, dim, h, w]
        let [b, d, h, w] = x.dims();
        x.reshape([b, d, h * w]).swap_dims(1, 2)
    }
}

/// A linear layer on rows: with a bias (every layer of the ViT has one), one operation
/// `x w + b` ([`graft_backend::fused::linear`], LibTorch's `addmm` on tch, as PyTorch's
/// `nn.Linear`); burn's `Linear` is a product and then a separate bias addition.
///
/// The product runs in `x`'s dtype: weights in another (f32 weights under bf16 autocast, see
/// [`Precision`]) are cast to it here.
///
/// # Shapes
/// `[rows, in]` -> `[rows, out]`
fn rows(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    let dtype = x.dtype();
    match &layer.bias {
        Some(b) => graft_backend::fused::linear(
            x,
            as_dtype(layer.weight.val(), dtype),
            as_dtype(b.val(), dtype),
        ),
        None if layer.weight.val().dtype() == dtype => layer.forward(x),
        None => burn::tensor::module::linear(x, as_dtype(layer.weight.val(), dtype), None),
    }
}

/// `t` in `dtype`; no operation when it is in it already.
fn as_dtype<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// A linear layer on every token as one `[batch·tokens, in] x [in, out]` product, as
/// PyTorch's `nn.Linear` runs a 3-d input. burn's `Linear` on `[batch, tokens, in]` keeps the
/// batch axis (unless its policy folds it) and LibTorch then runs `batch` small products
/// against the broadcast weight, whose cost grows faster with the batch than one product's.
///
/// # Shapes
/// `[batch, tokens, in]` -> `[batch, tokens, out]`
fn tokenwise(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let y = rows(layer, x.reshape([b * t, d])); // [batch·tokens, out]
    let out = y.dims()[1];
    y.reshape([b, t, out])
}

/// Multi-head self-attention with timm's fused `qkv` projection.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl Attention {
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, None)
    }

    /// The attention with `lora`'s update added to the query and value parts of the `qkv`
    /// projection's output, when given.
    ///
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn forward_with(&self, x: Tensor<3>, lora: Option<&QvLora>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let dh = d / self.heads;
        let x = x.reshape([b * t, d]);
        let qkv = rows(&self.qkv, x.clone()); // [batch·tokens, 3·dim], laid out (3, heads, dh)
        let qkv = match lora {
            Some(l) => qkv + l.delta(x),
            None => qkv,
        };
        let qkv = qkv.reshape([b, t, 3 * d]);
        // softmax(q kᵀ / sqrt(dh)) v per head as one operation (LibTorch's flash attention on
        // tch), the heads side by side.
        let out = attention(qkv, self.heads, (dh as f64).powf(-0.5)); // [batch, tokens, dim]
        tokenwise(&self.proj, out)
    }
}

/// The block's MLP: fc1, exact GELU (or QuickGELU), fc2.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub act: MlpAct,
}

impl Mlp {
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = tokenwise(&self.fc1, x); // [batch, tokens, mlp_dim]
        let h = match self.act {
            MlpAct::Gelu => gelu(h),
            MlpAct::QuickGelu => h.clone() * sigmoid(h * 1.702),
        };
        tokenwise(&self.fc2, h)
    }
}

/// Layer scale: a learned per-channel factor on a sub-layer's output (timm's `LayerScale`,
/// parameter `gamma`).
#[derive(Module, Debug)]
pub struct LayerScale {
    pub gamma: Param<Tensor<1>>,
}

impl LayerScale {
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// A pre-norm transformer block; its two sub-layers are exposed separately because each
/// ends at a node of the residual graph.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// Layer scale of the attention and MLP sub-layers (families with layer scale).
    pub ls1: Option<LayerScale>,
    pub ls2: Option<LayerScale>,
}

impl Block {
    /// The block with its linear layers' weights and biases in `dtype`.
    fn with_linear_dtype(self, dtype: DType) -> Block {
        let cast = |layer: Linear| Linear {
            weight: layer.weight.map(|w| as_dtype(w, dtype)),
            bias: layer.bias.map(|b| b.map(|b| as_dtype(b, dtype))),
        };
        Block {
            attn: Attention {
                qkv: cast(self.attn.qkv),
                proj: cast(self.attn.proj),
                heads: self.attn.heads,
            },
            mlp: Mlp {
                fc1: cast(self.mlp.fc1),
                fc2: cast(self.mlp.fc2),
                act: self.mlp.act,
            },
            ..self
        }
    }
}

/// LoRA on one block's query and value projections (Hu et al.): the fused `qkv` projection's
/// output gains s·B_q A_q x in its query part and s·B_v A_v x in its value part, the key part
/// unchanged. A (`q_a`, `v_a`: d -> r) is drawn Kaiming-uniform like PyTorch's `Linear` (and
/// PEFT's `lora_A`), B (`q_b`, `v_b`: r -> d) is zero, so the model starts as the pretrained
/// one; no biases.
#[derive(Module, Debug)]
pub struct QvLora {
    pub q_a: Linear,
    pub q_b: Linear,
    pub v_a: Linear,
    pub v_b: Linear,
    /// alpha: the update's scale is alpha / r.
    #[module(skip)]
    pub alpha: f64,
}

impl QvLora {
    pub fn new(dim: usize, config: &LoraConfig, device: &Device) -> QvLora {
        let a = || {
            LinearConfig::new(dim, config.rank)
                .with_bias(false)
                .init(device)
        };
        let b = || {
            LinearConfig::new(config.rank, dim)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        QvLora {
            q_a: a(),
            q_b: b(),
            v_a: a(),
            v_b: b(),
            alpha: config.alpha,
        }
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.q_a.weight.val().dims()[1]
    }

    /// Its configuration: rank and alpha.
    pub fn config(&self) -> LoraConfig {
        LoraConfig::new()
            .with_rank(self.rank())
            .with_alpha(self.alpha)
    }

    /// The update to the `qkv` projection's output, `[s·B_q A_q x, 0, s·B_v A_v x]`: both
    /// down projections as one product (x [A_q | A_v]), then one product with the
    /// `[2r, 3·dim]` matrix that holds s·B_q over the query columns and s·B_v over the value
    /// columns, so the update comes out in the qkv layout without a copy of the activations.
    ///
    /// # Shapes
    /// `[rows, dim]` -> `[rows, 3·dim]`
    pub fn delta(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let a = Tensor::cat(vec![self.q_a.weight.val(), self.v_a.weight.val()], 1); // [dim, 2r]
        let h = x.matmul(as_dtype(a, dtype)); // [rows, 2r]
        let (bq, bv) = (self.q_b.weight.val(), self.v_b.weight.val()); // [r, dim] each
        let [r, d] = bq.dims();
        let zeros = Tensor::<2>::zeros([r, 2 * d], &bq.device());
        let b = Tensor::cat(
            vec![
                Tensor::cat(vec![bq, zeros.clone()], 1),
                Tensor::cat(vec![zeros, bv], 1),
            ],
            0,
        ); // [2r, 3·dim]
        let scale = self.config().scale();
        let b = if scale == 1.0 { b } else { b * scale };
        h.matmul(as_dtype(b, dtype))
    }
}

/// A bottleneck adapter on edge (`src`, `dst`): A(x) = s * W_up(act(W_down x + b_down)) + b_up.
#[derive(Module, Debug)]
pub struct Adapter {
    pub down: Linear,
    pub up: Linear,
    pub src: usize,
    pub dst: usize,
    #[module(skip)]
    pub act: AdapterAct,
    #[module(skip)]
    pub scale: f64,
}

impl Adapter {
    pub fn new(edge: Edge, dim: usize, config: &AdapterConfig, device: &Device) -> Adapter {
        Adapter {
            down: LinearConfig::new(dim, config.rank).init(device),
            up: LinearConfig::new(config.rank, dim)
                .with_initializer(Initializer::Zeros)
                .init(device),
            src: edge.i,
            dst: edge.j,
            act: config.act,
            scale: config.scale,
        }
    }

    pub fn edge(&self) -> Edge {
        Edge::new(self.src, self.dst)
    }

    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let h = rows(&self.down, x.reshape([b * t, d])); // [batch·tokens, rank]
        let h = match self.act {
            AdapterAct::Gelu => gelu(h),
            AdapterAct::Relu => relu(h),
        };
        let y = if self.scale == 1.0 {
            rows(&self.up, h) // s = 1 (the default): the up projection alone
        } else {
            let dtype = h.dtype();
            let w = as_dtype(self.up.weight.val(), dtype);
            let y = burn::tensor::module::linear(h, w, None) * self.scale;
            match &self.up.bias {
                Some(b) => y + as_dtype(b.val(), dtype).unsqueeze::<2>(),
                None => y,
            }
        }; // [batch·tokens, dim]
        y.reshape([b, t, d])
    }
}

/// A ViT whose residual stream has nodes 0..=2L and adapters on edges between them.
#[derive(Module, Debug)]
pub struct Vit {
    pub patch_embed: PatchEmbed,
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub head: Linear,
    pub adapters: Vec<Adapter>,
    /// LoRA of block k at `lora[k]` (empty without LoRA).
    pub lora: Vec<QvLora>,
    /// `[1, 1, dim]`: DeiT's distillation token, read by `head_dist`.
    pub dist_token: Option<Param<Tensor<3>>>,
    /// `[1, registers, dim]`: DINOv2's register tokens.
    pub reg_token: Option<Param<Tensor<3>>>,
    /// The LayerNorm on the embedded tokens (CLIP's `ln_pre`).
    pub norm_pre: Option<LayerNorm>,
    /// DeiT's distillation head, on the distillation token.
    pub head_dist: Option<Linear>,
    #[module(skip)]
    pub config: VitConfig,
    /// What the products compute in ([`Vit::with_precision`]).
    #[module(skip)]
    pub precision: Precision,
    #[module(skip)]
    pub trainable: Trainable,
}

impl VitConfig {
    /// A randomly initialised ViT without adapters for `device`, every weight drawn now on
    /// the CPU ([`crate::on_host`]: the draw order, and thus the weights for a seed, depend
    /// neither on what runs first nor on the device), every parameter trainable.
    pub fn init(&self, device: &Device) -> Vit {
        crate::on_host(device, |host| self.build(host)).with_trainable(Trainable::Full)
    }

    /// The ViT with its parameters declared on `device` (drawn lazily).
    fn build(&self, device: &Device) -> Vit {
        let d = self.dim;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let lin = |i, o| {
            LinearConfig::new(i, o)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device)
        };
        // timm's `init_values` for DINOv2.
        let ls = || {
            self.layer_scale.then(|| LayerScale {
                gamma: Initializer::Constant { value: 1e-5 }.init([d], device),
            })
        };
        let normal = |shape: [usize; 3]| {
            Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init(shape, device)
        };
        let blocks = (0..self.depth)
            .map(|_| Block {
                norm1: ln(),
                attn: Attention {
                    qkv: lin(d, 3 * d),
                    proj: lin(d, d),
                    heads: self.heads,
                },
                norm2: ln(),
                mlp: Mlp {
                    fc1: lin(d, self.mlp_dim()),
                    fc2: lin(self.mlp_dim(), d),
                    act: self.mlp_act,
                },
                ls1: ls(),
                ls2: ls(),
            })
            .collect();
        let p = self.patch_size;
        Vit {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([self.channels, d], [p, p])
                    .with_stride([p, p])
                    .with_bias(!self.pre_norm)
                    .init(device),
            },
            cls_token: normal([1, 1, d]),
            pos_embed: normal([1, self.embedded_tokens(), d]),
            blocks,
            norm: ln(),
            head: lin(d, self.classes),
            adapters: Vec::new(),
            lora: Vec::new(),
            dist_token: self.dist_token.then(|| normal([1, 1, d])),
            reg_token: (self.reg_tokens > 0).then(|| normal([1, self.reg_tokens, d])),
            norm_pre: self.pre_norm.then(ln),
            head_dist: self.dist_token.then(|| lin(d, self.classes)),
            config: self.clone(),
            precision: Precision::F32,
            trainable: Trainable::Full,
        }
    }
}

/// Where a forward pass starts: images, or the plain network's values at a node and at the
/// nodes its adapters read there (the fine-tune stage's activation cache; see
/// [`Vit::plain_start`]).
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// `[batch, channels, height, width]`
    Images(Tensor<4>),
    /// The plain value of node `node`: `[batch, tokens, dim]`, or `[batch, pooled, dim]`
    /// ([`VitConfig::pooled_tokens`]: the class token, and the distillation token where there
    /// is one) at the last node of a model without adapters; and `reads`, the
    /// plain values `[batch, tokens, dim]` of the nodes [`PlainStart::reads`] names (empty
    /// when `node` is at or below every node the adapters touch).
    Node {
        node: usize,
        value: Tensor<3>,
        reads: Vec<(usize, Tensor<3>)>,
    },
}

/// Every node of one forward pass with a zero "tap" added at each, so that one backward
/// pass gives the gradient of the loss at every node.
#[derive(Debug)]
pub struct NodeTrace {
    /// `[batch, classes]`
    pub logits: Tensor<2>,
    /// X_i, detached: `n` tensors `[batch, tokens, dim]`.
    pub nodes: Vec<Tensor<3>>,
    taps: Vec<Tensor<3>>,
}

impl NodeTrace {
    /// Δ_j = ∂loss/∂x_j for every node j, `[batch, tokens, dim]` each, from the gradients
    /// of one backward pass of a loss computed from `logits`.
    pub fn node_grads(&self, grads: &Gradients) -> Vec<Tensor<3>> {
        self.taps
            .iter()
            .map(|t| t.grad(grads).unwrap_or_else(|| t.zeros_like()))
            .collect()
    }
}

impl Vit {
    pub fn graph(&self) -> graft_graph::Graph {
        self.config.graph()
    }

    /// The placement of the attached adapters.
    pub fn placement(&self) -> Placement {
        Placement::new(self.graph(), self.adapters.iter().map(Adapter::edge)).unwrap_or_default()
    }

    /// Replaces the adapters with one new adapter per edge of `placement`, drawn on the CPU
    /// in edge order and moved to the model's device ([`crate::on_host`]).
    pub fn with_placement(
        mut self,
        placement: &Placement,
        config: &AdapterConfig,
    ) -> Result<Vit, ModelError> {
        let device = self.cls_token.val().device();
        let graph = self.graph();
        for e in placement.edges() {
            graph.check(*e)?;
        }
        let dim = self.config.dim;
        self.adapters = crate::on_host(&device, |host| {
            placement
                .edges()
                .iter()
                .map(|e| Adapter::new(*e, dim, config, host))
                .collect::<Vec<_>>()
        });
        let trainable = self.trainable;
        Ok(self.with_trainable(trainable))
    }

    /// Adds LoRA of `config` to the query and value projections of every block (replacing
    /// any LoRA it had).
    pub fn with_lora(mut self, config: &LoraConfig) -> Vit {
        let device = self.cls_token.val().device();
        let (depth, dim) = (self.config.depth, self.config.dim);
        self.lora = crate::on_host(&device, |host| {
            (0..depth)
                .map(|_| QvLora::new(dim, config, host))
                .collect::<Vec<_>>()
        });
        let trainable = self.trainable;
        self.with_trainable(trainable)
    }

    /// Sets what the products compute in ([`Precision`], autocast's semantics). With a
    /// frozen backbone its blocks' linear weights and biases are cast to the low dtype here,
    /// once, as the weights PyTorch's autocast would cast on every step; trained parameters
    /// stay f32 and are cast where they are used. Set it after [`Vit::with_trainable`]: a
    /// backbone made trainable again is cast back to f32 (its values rounded to the low dtype).
    pub fn with_precision(mut self, precision: Precision) -> Vit {
        self.precision = precision;
        let frozen = self.trainable != Trainable::Full;
        let dtype = match precision.low() {
            Some(low) if frozen => DType::from(low),
            _ => DType::F32,
        };
        let stored = self.blocks.first().map(|b| b.attn.qkv.weight.val().dtype());
        if stored.is_some_and(|stored| stored != dtype) {
            self.blocks = self
                .blocks
                .into_iter()
                .map(|b| b.with_linear_dtype(dtype))
                .collect();
        }
        self
    }

    /// `x` in the low dtype of [`Vit::precision`] (where a product starts).
    fn low<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.precision.low() {
            Some(low) => as_dtype(x, low.into()),
            None => x,
        }
    }

    /// `x` in f32 (where a product's output joins the residual stream or the loss).
    fn f32<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        as_dtype(x, DType::F32)
    }

    /// `x + f`: a branch's output `f`, in the model's precision, joining the f32 residual
    /// stream `x` in one promoting addition ([`graft_backend::fused::add_promoted`]), as
    /// autocast's bf16 output joins PyTorch's f32 residual.
    fn join<const D: usize>(&self, x: Tensor<D>, f: Tensor<D>) -> Tensor<D> {
        if f.dtype() == x.dtype() {
            x + f
        } else {
            graft_backend::fused::add_promoted(x, f)
        }
    }

    /// Adapter `a` on `x`, in the model's precision (its output too: [`Vit::join`] adds it).
    ///
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    fn adapter(&self, a: &Adapter, x: Tensor<3>) -> Tensor<3> {
        a.forward(self.low(x))
    }

    /// Sets which parameters train: the adapters (and LoRA) and the head, everything, or the
    /// head.
    pub fn with_trainable(self, mode: Trainable) -> Vit {
        let mut m = match mode {
            Trainable::Full => self.set_require_grad(true),
            Trainable::Adapters | Trainable::HeadOnly => self.no_grad(),
        };
        m.head = m.head.set_require_grad(true);
        m.head_dist = m.head_dist.map(|h| h.set_require_grad(true));
        if mode == Trainable::Adapters {
            m.adapters = m
                .adapters
                .into_iter()
                .map(|a| a.set_require_grad(true))
                .collect();
            m.lora = m
                .lora
                .into_iter()
                .map(|l| l.set_require_grad(true))
                .collect();
        }
        m.trainable = mode;
        let precision = m.precision;
        m.with_precision(precision)
    }

    /// x_0: patch embedding, the prefix tokens (class, distillation, registers) before the
    /// patches, position embedding (over the patches alone with `no_embed_class`), and the
    /// pre-norm where the family has one.
    ///
    /// # Shapes
    /// images `[batch, channels, height, width]` -> `[batch, tokens, dim]`
    pub fn embed(&self, images: Tensor<4>) -> Tensor<3> {
        let x = self.patch_embed.forward(images); // [batch, patches, dim]
        let b = x.dims()[0];
        let prefix: Vec<Tensor<3>> = [Some(&self.cls_token), self.dist_token.as_ref()]
            .into_iter()
            .chain([self.reg_token.as_ref()])
            .flatten()
            .map(|t| t.val().repeat_dim(0, b))
            .collect(); // [batch, 1 or registers, dim] each
        let x = if self.config.no_embed_class {
            Tensor::cat([prefix, vec![x + self.pos_embed.val()]].concat(), 1)
        } else {
            Tensor::cat([prefix, vec![x]].concat(), 1) + self.pos_embed.val()
        };
        match &self.norm_pre {
            Some(norm) => self.layer_norm(norm, x),
            None => x,
        }
    }

    /// Sub-layer k (1..=2L) with its residual: x_k = x_{k-1} + F_k(x_{k-1}), with the
    /// block's LoRA where the model has it.
    ///
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn sublayer(&self, k: usize, x: Tensor<3>) -> Tensor<3> {
        self.sublayer_with(k, x, true)
    }

    /// [`Vit::sublayer`], with LoRA or the plain backbone's (`lora = false`).
    ///
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    fn sublayer_with(&self, k: usize, x: Tensor<3>, lora: bool) -> Tensor<3> {
        let b = (k - 1) / 2;
        let block = &self.blocks[b];
        let (f, scale) = if k % 2 == 1 {
            let lora = self.lora.get(b).filter(|_| lora);
            let h = self.low(self.layer_norm(&block.norm1, x.clone()));
            (block.attn.forward_with(h, lora), &block.ls1)
        } else {
            let h = self.low(self.layer_norm(&block.norm2, x.clone()));
            (block.mlp.forward(h), &block.ls2)
        };
        match scale {
            Some(ls) => x + ls.forward(self.f32(f)),
            None => self.join(x, f),
        }
    }

    /// One pass over nodes `start..=2L`: `nodes` holds the nodes below `start` on entry and
    /// all of them on return. Node `entry` is `x_entry` (the plain network's value there,
    /// before any adapter adds to it) and the nodes below it are read only where they hold
    /// plain values (see [`Vit::plain_start`]); `first` (pass 1's nodes) feeds the recurrent
    /// edges.
    fn pass(
        &self,
        entry: usize,
        x_entry: &Tensor<3>,
        nodes: &mut Vec<Tensor<3>>,
        start: usize,
        first: Option<&[Tensor<3>]>,
    ) {
        for k in start..=2 * self.config.depth {
            let mut x = if k <= entry {
                x_entry.clone()
            } else {
                self.sublayer(k, nodes[k - 1].clone())
            };
            for a in &self.adapters {
                match a.edge().kind() {
                    EdgeKind::Parallel | EdgeKind::LongRange if a.dst == k => {
                        x = self.join(x, self.adapter(a, nodes[a.src].clone()))
                    }
                    EdgeKind::Recurrent if a.dst == k => {
                        if let Some(first) = first {
                            x = self.join(x, self.adapter(a, first[a.src].clone()));
                        }
                    }
                    _ => {}
                }
            }
            for a in self.adapters.iter().filter(|a| a.src == k && a.dst == k) {
                x = self.join(x.clone(), self.adapter(a, x));
            }
            nodes.push(x);
        }
    }

    /// Every node of the forward pass that produces the logits: pass 1, then, when there
    /// are recurrent edges, pass 2 from the smallest recurrent output node.
    ///
    /// # Shapes
    /// images `[batch, channels, height, width]` -> n nodes `[batch, tokens, dim]`
    pub fn nodes(&self, images: Tensor<4>) -> Vec<Tensor<3>> {
        self.nodes_from(0, self.embed(images), Vec::new())
    }

    /// Where a forward pass with these adapters can start from the plain network's values
    /// ([`PlainStart`]), or `None` without adapters: the smallest node an adapter writes,
    /// and the plain nodes its adapters read without the pass computing them. With frozen
    /// backbone weights those values are the same in every epoch and every run on the same
    /// base, which is what the fine-tune stage's activation cache keeps. LoRA changes the
    /// first sub-layer already: with it the pass starts at node 0, the embedding.
    pub fn plain_start(&self) -> Option<PlainStart> {
        if !self.lora.is_empty() {
            return Some(PlainStart {
                entry: 0,
                reads: Vec::new(),
                skip_first_pass: false,
            });
        }
        PlainStart::of(self.adapters.iter().map(Adapter::edge))
    }

    /// The plain network's value at `node` (no adapter and no LoRA taken into account): the
    /// embedding, then sub-layers 1..=node.
    ///
    /// # Shapes
    /// images `[batch, channels, height, width]` -> `[batch, tokens, dim]`
    pub fn plain_node(&self, images: Tensor<4>, node: usize) -> Tensor<3> {
        self.plain_node_from(0, self.embed(images), node)
    }

    /// The plain network from node `from`'s value `x` up to node `to` (`from <= to`).
    ///
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn plain_node_from(&self, from: usize, x: Tensor<3>, to: usize) -> Tensor<3> {
        (from + 1..=to).fold(x, |x, k| self.sublayer_with(k, x, false))
    }

    /// The nodes of the forward pass from node `entry` on, given the plain network's value
    /// there ([`Vit::plain_node`]) and at the nodes in `reads`. `entry` must not exceed
    /// [`PlainStart::entry`], and `reads` must hold every node [`PlainStart::reads`] names
    /// below `entry` (none at all when `entry` is at or below every node an adapter
    /// touches). When `reads` holds the recurrent edges' sources too (a start with
    /// [`PlainStart::skip_first_pass`]), pass 1 is not computed: those are its values where
    /// it is read. The returned vector is indexed by node; the entries below `entry` are
    /// placeholders (`x_entry`, or the given plain values), never computed.
    ///
    /// # Shapes
    /// x_entry and reads `[batch, tokens, dim]` -> n nodes `[batch, tokens, dim]` (`tokens`
    /// may be [`VitConfig::pooled_tokens`] at `entry = 2L` without adapters: the pooled tokens
    /// are all the heads read)
    pub fn nodes_from(
        &self,
        entry: usize,
        x_entry: Tensor<3>,
        reads: Vec<(usize, Tensor<3>)>,
    ) -> Vec<Tensor<3>> {
        let plan = self.plain_start();
        debug_assert!(plan.as_ref().is_none_or(|p| {
            entry <= p.entry
                && p.reads
                    .iter()
                    .filter(|&&r| r < entry)
                    .all(|r| reads.iter().any(|(k, _)| k == r))
        }));
        let n = self.graph().nodes();
        let mut plain: Vec<Tensor<3>> = vec![x_entry.clone(); n];
        let mut given = vec![false; n];
        for (k, v) in reads {
            plain[k] = v;
            given[k] = true;
        }
        // Pass 1 is skipped when this is the plan's own start and every read it names (the
        // recurrent sources among them) was given.
        let skip_first = plan.as_ref().is_some_and(|p| {
            p.skip_first_pass && p.entry == entry && p.reads.iter().all(|&r| given[r])
        });
        match self.placement().second_pass_start() {
            None => {
                plain.truncate(entry);
                self.pass(entry, &x_entry, &mut plain, entry, None);
                plain
            }
            Some(start) if skip_first => {
                // Pass 1 is the plain network wherever the recurrent edges read it.
                debug_assert_eq!(start, entry);
                let mut second = plain[..start].to_vec();
                self.pass(entry, &x_entry, &mut second, start, Some(&plain));
                second
            }
            Some(start) => {
                let mut first = plain[..entry].to_vec();
                self.pass(entry, &x_entry, &mut first, entry, None);
                let mut second: Vec<Tensor<3>> = first[..start].to_vec();
                self.pass(entry, &x_entry, &mut second, start, Some(&first));
                second
            }
        }
    }

    /// Logits from a [`ModelInput`]: images, or a node's cached plain value.
    ///
    /// # Shapes
    /// input (see [`ModelInput`]) -> logits `[batch, classes]`
    pub fn forward_input(&self, input: ModelInput) -> Tensor<2> {
        match input {
            ModelInput::Images(images) => self.forward(images),
            ModelInput::Node { node, value, reads } => {
                let last = self
                    .nodes_from(node, value, reads)
                    .pop()
                    .expect("n >= 1 nodes");
                self.logits(last)
            }
        }
    }

    /// The pooled tokens after the final LayerNorm, one `[batch, dim]` each: the class
    /// token, then the distillation token where there is one.
    ///
    /// # Shapes
    /// last node `[batch, tokens, dim]` -> [`VitConfig::pooled_tokens`] x `[batch, dim]`
    fn pooled(&self, last: Tensor<3>) -> Vec<Tensor<2>> {
        let [b, _, d] = last.dims();
        let normed = self.layer_norm(&self.norm, last);
        (0..self.config.pooled_tokens())
            .map(|t| normed.clone().narrow(1, t, 1).reshape([b, d]))
            .collect()
    }

    /// Features before the head after the final LayerNorm: the class token's (with a
    /// distillation token, the mean of both, as timm's `pre_logits`).
    ///
    /// # Shapes
    /// last node `[batch, tokens, dim]` -> `[batch, dim]`
    pub fn pool(&self, last: Tensor<3>) -> Tensor<2> {
        match self.pooled(last).as_slice() {
            [cls] => cls.clone(),
            [cls, dist] => (cls.clone() + dist.clone()) / 2.0,
            _ => unreachable!("one or two tokens are pooled"),
        }
    }

    /// The head on the class token; with a distillation token, the mean of `head` on the
    /// class token and `head_dist` on the distillation token (timm's DeiT in eval mode).
    ///
    /// # Shapes
    /// last node `[batch, tokens, dim]` -> logits `[batch, classes]`
    pub fn logits(&self, last: Tensor<3>) -> Tensor<2> {
        let head = |layer, x: &Tensor<2>| self.f32(rows(layer, self.low(x.clone())));
        match (&self.head_dist, self.pooled(last).as_slice()) {
            (Some(head_dist), [cls, dist]) => (head(&self.head, cls) + head(head_dist, dist)) / 2.0,
            (None, [cls]) => head(&self.head, cls),
            _ => unreachable!("the pooled tokens are the heads' tokens"),
        }
    }

    /// One of the model's LayerNorms as a single operation with its own backward step
    /// ([`graft_backend::fused::layer_norm`]); burn's module composes it from nine.
    ///
    /// # Shapes
    /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    fn layer_norm(&self, norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
        match &norm.beta {
            Some(beta) => graft_backend::fused::layer_norm(
                x,
                norm.gamma.val(),
                beta.val(),
                self.config.norm_eps,
            ),
            None => norm.forward(x),
        }
    }

    /// # Shapes
    /// images `[batch, channels, height, width]` -> logits `[batch, classes]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let last = self.nodes(images).pop().expect("n >= 1 nodes");
        self.logits(last)
    }

    /// # Shapes
    /// images `[batch, channels, height, width]` -> features `[batch, dim]`
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.pool(self.nodes(images).pop().expect("n >= 1 nodes"))
    }

    /// One forward pass recording X_i at every node and inserting a zero tap there, so that
    /// [`NodeTrace::node_grads`] after one backward pass gives Δ_j at every node: all n²
    /// edge gradients G_ij = Δ_jᵀ X_i come from one forward and one backward pass. The
    /// device must be an autodiff device. Adapters with recurrent edges are refused (the
    /// probe traces the plain network).
    ///
    /// # Shapes
    /// images `[batch, channels, height, width]` -> n nodes `[batch, tokens, dim]`, logits `[batch, classes]`
    pub fn trace(&self, images: Tensor<4>) -> Result<NodeTrace, ModelError> {
        if self.placement().has_recurrent() {
            return Err(ModelError::TraceRecurrent);
        }
        let mut x = self.embed(images);
        let mut nodes = Vec::new();
        let mut taps = Vec::new();
        let tap = |x: Tensor<3>, nodes: &mut Vec<Tensor<3>>, taps: &mut Vec<Tensor<3>>| {
            let t = x.zeros_like().detach().require_grad();
            nodes.push(x.clone().detach());
            taps.push(t.clone());
            x + t
        };
        // Node 0 with its sequential adapter, then each sub-layer.
        let mut plain: Vec<Tensor<3>> = Vec::new();
        for k in 0..=2 * self.config.depth {
            if k > 0 {
                x = self.sublayer(k, plain[k - 1].clone());
            }
            for a in self.adapters.iter().filter(|a| a.dst == k && a.src < k) {
                x = self.join(x, self.adapter(a, plain[a.src].clone()));
            }
            for a in self.adapters.iter().filter(|a| a.src == k && a.dst == k) {
                x = self.join(x.clone(), self.adapter(a, x));
            }
            x = tap(x, &mut nodes, &mut taps);
            plain.push(x.clone());
        }
        let logits = self.logits(x);
        Ok(NodeTrace {
            logits,
            nodes,
            taps,
        })
    }
}
