//! One injection mechanism for every backbone: [`apply`] puts a [`Method`] into any
//! [`PeftHost`] through its declared sites, and every later operation — [`merged`],
//! [`mask_gradients`], [`after_backward`] (sparse re-selection), [`sparse_masks`] /
//! [`with_sparse_masks`], [`groups`] — is written once here over the same sites.
//!
//! Trainability is structural, as in HF PEFT: [`apply`] freezes the backbone, and what trains is
//! exactly what the method created (its adapter slots, branches, prompts), the task head, and —
//! for BitFit — the bias terms of burn's layers; never a match on parameter names.

use std::collections::HashMap;

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::adapter::{AdapterConfig, AdapterOptions};
use crate::host::HostTensor;
use crate::method::Method;
use crate::params::{Tally, is_bias_field, set_trainable, tally};
use crate::places::{AdapterKind, BranchKind, Places};
use crate::pruned::PrunedSlot;
use crate::rng::Rng;
use crate::site::{PeftHost, SiteMut, Targets};
use crate::slot::{AdapterSlot, LinearBranch};
use crate::sparse::{self, SparseAction, SparseDelta};

/// A resolved target: a linear site, whole, or some of its `n` equal output parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub site: String,
    /// `(chosen parts, n)`; `None`: the whole linear.
    pub parts: Option<(Vec<usize>, usize)>,
}

/// The method's linear targets, checked against the family's vocabulary (empty: its default;
/// LoRA's is the family's `lora_default`). Parts of a fused linear (`q`, `v` of `qkv`) are LoRA
/// targets only, and a linear is targeted whole or by parts, not both.
pub fn resolve_targets(method: &Method, table: Targets) -> crate::Result<Vec<Target>> {
    let Some(t) = method.targets() else { return Ok(Vec::new()) };
    let default = if matches!(method, Method::Lora(_)) { table.lora_default } else { table.default };
    let t: Vec<String> = if t.is_empty() { default.iter().map(|s| s.to_string()).collect() } else { t.clone() };
    let mut out: Vec<Target> = Vec::new();
    for name in &t {
        if table.names.contains(&name.as_str()) {
            if out.iter().any(|x| &x.site == name) {
                return Err(crate::Error::Target(format!("target `{name}` is given twice, or with its parts")));
            }
            out.push(Target { site: name.clone(), parts: None });
            continue;
        }
        let Some((site, parts)) = table.parts.iter().find(|(_, p)| p.contains(&name.as_str())) else {
            let parts: Vec<String> = table.parts.iter().map(|(s, p)| format!("{} (of {s})", p.join(", "))).collect();
            let also = if parts.is_empty() { String::new() } else { format!("; LoRA also takes the parts {}", parts.join("; ")) };
            return Err(crate::Error::Target(format!("unknown target `{name}`; targets of {}: {}{also}", table.family, table.names.join(", "))));
        };
        if !matches!(method, Method::Lora(_)) {
            return Err(crate::Error::Target(format!("target `{name}` is a part of `{site}`; only lora targets parts (use `{site}`)")));
        }
        let index = parts.iter().position(|p| p == name).unwrap_or(0);
        match out.iter_mut().find(|x| x.site == *site) {
            Some(Target { parts: Some((chosen, _)), .. }) if !chosen.contains(&index) => chosen.push(index),
            Some(_) => return Err(crate::Error::Target(format!("target `{name}` is given twice, or with `{site}` whole"))),
            None => out.push(Target { site: site.to_string(), parts: Some((vec![index], parts.len())) }),
        }
    }
    for x in &mut out {
        if let Some((chosen, _)) = &mut x.parts {
            chosen.sort_unstable();
        }
    }
    Ok(out)
}

/// Injects `method` into `host` and sets what trains. Masks and initial values come from
/// streams of `seed`, one per block (shared by the block's slots, in the method's order).
pub fn apply<B: Backend, H: PeftHost<B>>(host: H, method: &Method, seed: u64, device: &B::Device) -> crate::Result<H> {
    method.validate()?;
    let targets = resolve_targets(method, host.targets())?;
    let family = host.targets().family;
    let places = method.places();
    let mut host = match places {
        Places::Backbone { biases_only: false } => set_trainable(host, true, None),
        Places::Backbone { biases_only: true } => set_trainable(set_trainable(host, false, None), true, Some(&is_bias_field)),
        // every other method trains only what it creates
        Places::Head | Places::Adapters { .. } | Places::Branches(_) | Places::Prompts { .. } => set_trainable(host, false, None),
    };
    {
        let mut sites = host.sites_mut();
        let depth = sites.iter().map(|s| match s {
            SiteMut::Adapter { site, .. } => site.block + 1,
            SiteMut::Linear { site, .. } => site.block + 1,
        });
        let depth = depth.max().unwrap_or(0);
        for block in 0..depth {
            let mut rng = Rng::derive(seed, block as u64);
            match places {
                Places::Adapters { placements, adapter } => {
                    for &place in placements {
                        let found = sites.iter_mut().find_map(|s| match s {
                            SiteMut::Adapter { site, slot } if site.block == block && site.place == place => Some((site.width, site.normalised_input, slot)),
                            _ => None,
                        });
                        let Some((d, normalised, slot)) = found else {
                            return Err(crate::Error::Target(format!(
                                "method {} needs an adapter {}; {family} has no such site in block {block}",
                                method.name(),
                                place.describe()
                            )));
                        };
                        **slot = Some(adapter_slot(adapter, d, normalised, &mut rng, device));
                    }
                }
                Places::Branches(kind) => {
                    for t in &targets {
                        let found = sites.iter_mut().find_map(|s| match s {
                            SiteMut::Linear { site, linear } if site.block == block && site.target == t.site => Some(linear),
                            _ => None,
                        });
                        let Some(linear) = found else { continue };
                        // reading the weight initialises a lazily initialised (random) base here, as the
                        // first release did: seeded random-init runs stay bit-identical across versions
                        let [i, o] = linear.weight.val().dims();
                        linear.branch = Some(linear_branch(kind, t, [i, o], &mut rng, device)?);
                    }
                }
                Places::Head | Places::Backbone { .. } | Places::Prompts { .. } => {}
            }
        }
    }
    if let Places::Prompts { options: p, deep } = places {
        let Some((site, slot)) = host.prompts_mut() else {
            return Err(crate::Error::Target(format!("method {} needs a token sequence for its prompts; {family} has none", method.name())));
        };
        *slot = Some(p.init(&site, deep, device));
    }
    if let Some(h) = host.head_mut() {
        *h = set_trainable(h.clone(), true, None);
    }
    Ok(host)
}

/// The branch a method puts on the linear target `t` of shape `[i, o]`.
fn linear_branch<B: Backend>(kind: BranchKind<'_>, t: &Target, [i, o]: [usize; 2], rng: &mut Rng, device: &B::Device) -> crate::Result<LinearBranch<B>> {
    Ok(match kind {
        BranchKind::Lora(l) => match &t.parts {
            Some((parts, n)) if o % n == 0 => LinearBranch::LoraParts(l.init_parts(i, o, parts, *n, device)),
            Some((_, n)) => return Err(crate::Error::Target(format!("`{}` has {o} outputs, not {n} equal parts", t.site))),
            None => LinearBranch::Lora(l.init(i, o, device)),
        },
        BranchKind::MosaLora(m) => LinearBranch::MosaLora(m.init(i, o, rng, device)),
        BranchKind::Sparse(_) => LinearBranch::Sparse(SparseDelta::new(i, o, device)),
    })
}

/// The adapter a method puts at a site of width `d`; a site that feeds it a normalised stream gets
/// one without a LayerNorm of its own.
fn adapter_slot<B: Backend>(kind: AdapterKind<'_>, d: usize, normalised_input: bool, rng: &mut Rng, device: &B::Device) -> AdapterSlot<B> {
    let own = |o: &AdapterOptions| o.clone().with_norm(o.norm && !normalised_input);
    match kind {
        AdapterKind::Mosa(m) => AdapterSlot::Mosa(m.clone().with_adapter(own(&m.adapter)).config(d).init(rng, device)),
        AdapterKind::Pruned(p) => match p.clone().with_adapter(own(&p.adapter)).init(d, rng, device) {
            PrunedSlot::Reference(p) => AdapterSlot::Pruned(p),
            PrunedSlot::Legacy(p) => AdapterSlot::Mosa(p),
        },
        AdapterKind::Plain(o) => AdapterSlot::Plain(AdapterConfig::new(d, own(o)).init(device)),
    }
}

/// The inference model: every MoSA slot averaged into a plain adapter and every linear branch
/// folded into its base weight, so inference costs one plain adapter per slot.
pub fn merged<B: Backend, H: PeftHost<B>>(host: &H) -> H {
    let mut m = host.clone();
    for s in m.sites_mut() {
        match s {
            SiteMut::Adapter { slot: Some(a), .. } => *a = a.merged(),
            SiteMut::Linear { linear, .. } => linear.merge(),
            SiteMut::Adapter { slot: None, .. } => {}
        }
    }
    m
}

/// Masks the gradients of every expert-split tensor (once per step, after backward).
pub fn mask_gradients<B: AutodiffBackend, H: PeftHost<B>>(host: &mut H, grads: &mut GradientsParams) {
    for s in host.sites_mut() {
        match s {
            SiteMut::Adapter { slot: Some(a), .. } => a.mask_gradients(grads),
            SiteMut::Linear { linear: crate::site::TunableLinear { branch: Some(b), .. }, .. } => b.mask_gradients(grads),
            SiteMut::Adapter { slot: None, .. } | SiteMut::Linear { linear: crate::site::TunableLinear { branch: None, .. }, .. } => {}
        }
    }
}

/// The bound of every expert draw one training forward makes, site by site (MoSA, MoSA-LoRA;
/// empty for every other method): what [`crate::draws::advanced`] needs to find where a second
/// pass's draws begin.
pub fn expert_draws<B: Backend, H: PeftHost<B>>(host: &mut H) -> Vec<usize> {
    let mut bounds = Vec::new();
    for s in host.sites_mut() {
        match s {
            SiteMut::Adapter { slot: Some(a), .. } => bounds.extend(a.expert_draws()),
            SiteMut::Linear { linear: crate::site::TunableLinear { branch: Some(b), .. }, .. } => bounds.extend(b.expert_draws()),
            SiteMut::Adapter { slot: None, .. } | SiteMut::Linear { linear: crate::site::TunableLinear { branch: None, .. }, .. } => {}
        }
    }
    bounds
}

/// The method's pre-forward hook: on a sparse re-selection step, the pass scores every entry of
/// ΔW (its gradient as if the mask were all ones); the value computed is unchanged.
pub fn before_forward<B: Backend, H: PeftHost<B>>(host: &mut H, method: &Method, (epoch, step, steps): (usize, usize, usize)) {
    let on = method.sparse().is_some_and(|c| c.action(epoch, step, steps) == SparseAction::Reselect);
    set_sparse_scoring(host, on);
}

fn set_sparse_scoring<B: Backend, H: PeftHost<B>>(host: &mut H, on: bool) {
    for s in host.sites_mut() {
        if let SiteMut::Linear { linear, .. } = s
            && let Some(LinearBranch::Sparse(d)) = &mut linear.branch
        {
            d.score_all = on;
        }
    }
}

/// The sparse masks a reselection changed, by parameter name.
pub type ChangedMasks<B> = Vec<(String, Tensor<B, 2>)>;

/// The method's post-backward hook: sparse re-selection when its schedule says so, then the
/// expert-gradient masks. Returns the new sparse masks when they changed (the optimiser resets
/// the moments of entries that left them).
pub fn after_backward<B: AutodiffBackend, H: PeftHost<B>>(
    mut host: H,
    grads: &mut GradientsParams,
    method: &Method,
    (epoch, step, steps): (usize, usize, usize),
    rng: &mut Rng,
) -> crate::Result<(H, ChangedMasks<B>)> {
    let mut changed = Vec::new();
    if let Some(cfg) = method.sparse()
        && cfg.action(epoch, step, steps) == SparseAction::Reselect
    {
        host = reselect_sparse(host, grads, cfg, rng)?;
        changed = sparse_masks(&mut host);
    }
    mask_gradients(&mut host, grads);
    Ok((host, changed))
}

/// Re-selects every sparse delta's mask from the gradients of the last backward pass (see
/// [`sparse::reselect`]); errors name the tensor.
pub fn reselect_sparse<B: AutodiffBackend, H: PeftHost<B>>(
    mut host: H,
    grads: &GradientsParams,
    cfg: &sparse::SparseConfig,
    rng: &mut Rng,
) -> crate::Result<H> {
    let mut sites = host.sites_mut();
    let mut owners = Vec::new();
    let mut deltas = Vec::new();
    let mut names = Vec::new();
    for (k, s) in sites.iter_mut().enumerate() {
        if let SiteMut::Linear { linear, site } = s
            && let Some(LinearBranch::Sparse(d)) = linear.branch.take_if(|b| matches!(b, LinearBranch::Sparse(_)))
        {
            owners.push(k);
            deltas.push(d);
            names.push(format!("{}.weight", site.path));
        }
    }
    // on an error the deltas are gone from the host, which is then dropped by the caller
    let selected = sparse::reselect(deltas, &names, grads, cfg, rng)?;
    for (k, mut d) in owners.into_iter().zip(selected) {
        d.score_all = false;
        if let SiteMut::Linear { linear, .. } = &mut sites[k] {
            linear.branch = Some(LinearBranch::Sparse(d));
        }
    }
    drop(sites);
    Ok(host)
}

/// Parameters the optimiser must not decay: the sparse deltas, unless the method asks for decay
/// (by parameter identity, from the sites).
pub fn no_decay<B: Backend, H: PeftHost<B>>(host: &H, method: &Method) -> Vec<burn::module::ParamId> {
    if method.sparse().is_none_or(|s| s.weight_decay) {
        return Vec::new();
    }
    let mut h = host.clone();
    h.sites_mut()
        .into_iter()
        .filter_map(|s| match s {
            SiteMut::Linear { linear, .. } => match &linear.branch {
                Some(LinearBranch::Sparse(d)) => Some(d.delta.id),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Key of a sparse delta's mask: the path of its `delta` parameter.
fn mask_key(layer_path: &str) -> String {
    format!("{layer_path}.branch.Sparse.delta")
}

/// The 0/1 masks of the sparse deltas, keyed by the path of their `delta` parameter. Masks are
/// state, not parameters: checkpoints and saved runs store them under these keys.
pub fn sparse_masks<B: Backend, H: PeftHost<B>>(host: &mut H) -> Vec<(String, Tensor<B, 2>)> {
    let mut v = Vec::new();
    for s in host.sites_mut() {
        if let SiteMut::Linear { site, linear } = s
            && let Some(LinearBranch::Sparse(d)) = &linear.branch
        {
            v.push((mask_key(&site.path), d.mask.clone()));
        }
    }
    v
}

/// Restores masks saved under [`sparse_masks`]' keys; every key must name a sparse delta of the
/// host, with its shape.
pub fn with_sparse_masks<B: Backend, H: PeftHost<B>>(mut host: H, masks: &HashMap<String, HostTensor>) -> crate::Result<H> {
    let mut used = 0;
    for s in host.sites_mut() {
        if let SiteMut::Linear { site, linear } = s
            && let Some(LinearBranch::Sparse(d)) = &mut linear.branch
        {
            let key = mask_key(&site.path);
            if let Some(m) = masks.get(&key) {
                let dims = d.mask.dims();
                if m.shape.as_slice() != dims.as_slice() {
                    return Err(crate::Error::Mismatch(format!("sparse mask {key}: shape {:?}, the model has {dims:?}", m.shape)));
                }
                d.mask = m.to_tensor(&d.mask.device());
                used += 1;
            }
        }
    }
    if used != masks.len() {
        return Err(crate::Error::Mismatch(format!("{} sparse mask(s) do not match a sparse delta of this model", masks.len() - used)));
    }
    Ok(host)
}

/// Parameters by group, for reporting: what the method added (expert-split tensors apart),
/// the task head, and the backbone (everything else).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Groups {
    /// The split tensors of MoSA / MoSA-LoRA.
    pub experts: Tally,
    /// Everything else a method added (adapters, LoRA factors, sparse deltas, prompts).
    pub adapter: Tally,
    pub head: Tally,
    pub backbone: Tally,
}

impl Groups {
    pub fn all(&self) -> Tally {
        self.experts + self.adapter + self.head + self.backbone
    }

    /// `(name, tally)` of the non-empty groups, in name order.
    pub fn rows(&self) -> Vec<(&'static str, Tally)> {
        [("adapter", self.adapter), ("backbone", self.backbone), ("experts", self.experts), ("head", self.head)]
            .into_iter()
            .filter(|(_, t)| t.total > 0)
            .collect()
    }
}

/// Counts `host`'s parameters by group, from what sits in its sites (never from names).
pub fn groups<B: Backend, H: PeftHost<B>>(host: &H) -> Groups {
    let mut h = host.clone();
    let all = tally(&h);
    let mut g = Groups::default();
    for s in h.sites_mut() {
        let (e, a) = match s {
            SiteMut::Adapter { slot: Some(a), .. } => a.param_split(),
            SiteMut::Linear { linear: crate::site::TunableLinear { branch: Some(b), .. }, .. } => b.param_split(),
            SiteMut::Adapter { slot: None, .. } | SiteMut::Linear { linear: crate::site::TunableLinear { branch: None, .. }, .. } => continue,
        };
        g.experts = g.experts + e;
        g.adapter = g.adapter + a;
    }
    if let Some((_, Some(p))) = h.prompts_mut() {
        g.adapter = g.adapter + tally(&*p);
    }
    if let Some(head) = h.head_mut() {
        g.head = tally(&*head);
    }
    g.backbone = all - g.experts - g.adapter - g.head;
    g
}
