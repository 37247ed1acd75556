use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::{checkpoint, KvCache};
use opt::BackendTask;
struct P;
impl BackendTask for P {
    type Output = ();
    fn run<AD: AutodiffBackend>(self, d: AD::Device) {
        type B<AD> = <AD as AutodiffBackend>::InnerBackend;
        {
            use burn::tensor::Distribution;
            let mut c = opt::model::cache::LayerCache::<B<AD>>::new(2, 4, 12, 8, &d);
            let k1 = Tensor::<B<AD>, 4>::random([2, 9, 4, 8], Distribution::Default, &d);
            let k2 = Tensor::<B<AD>, 4>::random([2, 1, 4, 8], Distribution::Default, &d);
            c.append(k1.clone(), k1.clone());
            let (k, _) = c.append(k2.clone(), k2.clone());
            let want = Tensor::cat(vec![k1, k2], 1);
            println!(
                "cache append diff {}",
                (k - want).abs().max().into_scalar().elem::<f32>()
            );
        }
        {
            use burn::tensor::Distribution;
            let q =
                Tensor::<B<AD>, 4>::random([2, 1, 4, 8], Distribution::Default, &d).swap_dims(1, 2);
            let k = Tensor::<B<AD>, 4>::random([2, 10, 4, 8], Distribution::Default, &d)
                .swap_dims(1, 2);
            let s = q.clone().matmul(k.clone().swap_dims(2, 3));
            for r in 0..2 {
                let qr = q.clone().slice([r..r + 1]);
                let kr = k.clone().slice([r..r + 1]);
                let sr = qr.matmul(kr.swap_dims(2, 3));
                println!(
                    "matmul row {r} diff {}",
                    (s.clone().slice([r..r + 1]) - sr)
                        .abs()
                        .max()
                        .into_scalar()
                        .elem::<f32>()
                );
            }
            let qc = q.clone() * 1.0;
            let kc = k.clone().swap_dims(2, 3) * 1.0;
            let s2 = qc.matmul(kc);
            println!(
                "matmul contiguous diff {}",
                (s - s2).abs().max().into_scalar().elem::<f32>()
            );
        }
        let m =
            checkpoint::load_pretrained::<B<AD>>("../shared/fixtures/hf-opt/tiny-postln-proj", &d)
                .unwrap();
        let ids = vec![
            1i64, 1, 1, 1, 2, 866, 478, 830, 463, 2, 939, 741, 666, 16, 393, 830, 660, 545,
        ];
        let mask = vec![0i64, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let t = |v: Vec<i64>, w| Tensor::<B<AD>, 2, Int>::from_data(TensorData::new(v, [2, w]), &d);
        let full = m.forward(t(ids.clone(), 9), Some(t(mask.clone(), 9)), None);
        let mut cache = KvCache::new(&m.config, 2, 12, &d);
        let pre = m.forward(
            t(ids.clone(), 9),
            Some(t(mask.clone(), 9)),
            Some(&mut cache),
        );
        let diff = (full - pre).abs().max().into_scalar().elem::<f32>();
        println!("prefill diff {diff}");
        // one decode step with token 950 for both rows
        let mut ids2 = Vec::new();
        let mut mask2 = Vec::new();
        for r in 0..2 {
            ids2.extend_from_slice(&ids[r * 9..r * 9 + 9]);
            ids2.push(950);
            mask2.extend_from_slice(&mask[r * 9..r * 9 + 9]);
            mask2.push(1);
        }
        let full2 = m
            .forward(t(ids2.clone(), 10), Some(t(mask2.clone(), 10)), None)
            .slice([0..2, 9..10]);
        let step = m.forward(
            t(vec![950, 950], 1),
            Some(t(mask2.clone(), 10)),
            Some(&mut cache),
        );
        let mk = t(mask2.clone(), 10);
        let pos = mk.clone().cumsum(1) * mk.clone() - 1 + 2;
        println!(
            "pos {:?}",
            pos.clone()
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()
        );
        println!(
            "pos slice {:?}",
            pos.slice([0..2, 9..10])
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()
        );
        let pm = mk
            .clone()
            .reshape([2, 1, 1, 10])
            .expand([2, 1, 1, 10])
            .equal_elem(0)
            .expand([2, 4, 1, 10]);
        println!(
            "pad mask {:?}",
            pm.into_data()
                .convert::<bool>()
                .to_vec::<bool>()
                .unwrap()
                .iter()
                .map(|&b| b as u8)
                .collect::<Vec<_>>()
        );
        let mk = t(mask2.clone(), 10);
        let pos = mk.clone().cumsum(1) * mk.clone() - 1 + 2;
        println!(
            "pos {:?}",
            pos.clone()
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()
        );
        println!(
            "pos slice {:?}",
            pos.slice([0..2, 9..10])
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()
        );
        let pm = mk
            .clone()
            .reshape([2, 1, 1, 10])
            .expand([2, 1, 1, 10])
            .equal_elem(0)
            .expand([2, 4, 1, 10]);
        println!(
            "pad mask {:?}",
            pm.into_data()
                .convert::<bool>()
                .to_vec::<bool>()
                .unwrap()
                .iter()
                .map(|&b| b as u8)
                .collect::<Vec<_>>()
        );
        for r in 0..2 {
            let a = full2.clone().slice([r..r + 1]);
            let b = step.clone().slice([r..r + 1]);
            println!(
                "row {r} decode diff {}",
                (a - b).abs().max().into_scalar().elem::<f32>()
            );
        }
    }
}
fn main() {
    opt::backend::run(opt::BackendKind::from_env().unwrap(), P).unwrap();
}
