//! A tiny RIDE model memorises a small batch: the model, the RIDE loss, the
//! optimiser and the backward pass work together.

use ride_trainer::data::mixup::smooth_one_hot;
use ride_trainer::loss::{Criterion, RideLoss, RideLossOptions};
use ride_trainer::model::{RideSwin, SwinSpec};
use ride_trainer::optim::{clip_grad_norm, AdamW};
use tch::{nn, Device, Kind, Tensor};

#[test]
fn tiny_ride_model_memorises_a_batch() {
    tch::manual_seed(0);
    let spec = SwinSpec {
        img_size: 16,
        patch_size: 2,
        in_chans: 3,
        num_classes: 4,
        embed_dim: 16,
        depths: vec![1, 1, 1],
        num_heads: vec![1, 2, 4],
        window_size: 4,
        mlp_ratio: 2.0,
        qkv_bias: true,
        qk_scale: None,
        drop_rate: 0.0,
        drop_path_rate: 0.0,
        ape: false,
        patch_norm: true,
        use_normed_linear: true,
        num_experts: 2,
        branching_start: 1,
        force_original_feature_dim: false,
        force_no_branches: false,
        use_checkpoint: false,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = RideSwin::new(&vs.root(), &spec).unwrap();
    let x = Tensor::randn([8, 3, 16, 16], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3]);
    let soft = smooth_one_hot(&y, 4, 0.0);
    let o = RideLossOptions {
        max_m: 0.5,
        s: 30.0,
        base_div_temp: 1.0,
        base_loss_factor: 1.0,
        additional_div_factor: -0.2,
        reweight_factor: 0.05,
        reweight_epoch: None,
        hard_labels: false,
    };
    let crit = Criterion::Ride(RideLoss::new(&[2, 2, 2, 2], &o));
    let mut opt = AdamW::new(&vs, 0.0, 1e-8, (0.9, 0.999));
    let params = opt.params();
    let first = crit
        .loss(&model.forward(&x, true).experts, &y, &soft, 0)
        .double_value(&[]);
    let mut last = first;
    for _ in 0..150 {
        opt.zero_grad();
        let loss = crit.loss(&model.forward(&x, true).experts, &y, &soft, 0);
        loss.backward();
        let _ = clip_grad_norm(&params, 5.0).unwrap();
        opt.step(2e-3).unwrap();
        last = loss.double_value(&[]);
    }
    let pred = tch::no_grad(|| model.forward(&x, false).mean().argmax(1, false));
    assert!(pred.equal(&y), "predictions {pred:?}");
    assert!(last < first * 0.2, "loss {first} -> {last}");
}
