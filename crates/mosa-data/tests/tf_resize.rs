//! VTAB preprocessing against TensorFlow itself: `tests/data/tf_resize.safetensors` holds random
//! sources and what `tf.image.resize(src, [S, S])` (the MoSA / VPT `preprocess_fn`) and the ImageNet
//! normalisation made of them (`scripts/make_tf_resize.py`, TensorFlow 2.21 CPU).

use mosa_core::Rng;
use mosa_data::image::Rgb8;
use mosa_data::resize::{TfBilinear, resize_bilinear};
use mosa_data::{Style, Transform};
use mosa_testkit::max_abs_diff;
use safetensors::SafeTensors;

fn f32s(t: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    t.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn vtab_resize_and_normalisation_match_tensorflow() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tf_resize.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = st.names().iter().filter(|n| n.starts_with("src.")).count();
    assert!(cases >= 5, "fixture has {cases} cases");
    let mut shrunk_differs_from_pil = 0;
    for k in 0..cases {
        let src = st.tensor(&format!("src.{k}")).unwrap();
        let (h, w) = (src.shape()[0], src.shape()[1]);
        let img = Rgb8::new(w, h, src.data().to_vec());
        let want = f32s(&st.tensor(&format!("resized.{k}")).unwrap());
        let s = st.tensor(&format!("resized.{k}")).unwrap().shape()[0];
        // the resize alone: TensorFlow's float output, exactly up to f32 rounding
        let got = TfBilinear::new(w, h, s, s).resize(&img);
        let worst = max_abs_diff(&got, &want);
        assert!(worst <= 1e-4, "case {k} ({w}x{h} -> {s}): resize differs by {worst}");
        // the whole evaluation transform, through the cacheable compacted image
        let t = Transform::new(Style::Vtab, s, false);
        let mut input = vec![0.0; 3 * s * s];
        t.finish(&t.prepare(&img), &mut Rng::new(0), &mut input);
        let want_input = f32s(&st.tensor(&format!("model_input.{k}")).unwrap());
        let worst = max_abs_diff(&input, &want_input);
        assert!(worst <= 1e-5, "case {k}: model input differs by {worst}");
        // and it is not PIL's antialiased, 8-bit resize: shrinking gives other values
        if w > s && h > s {
            let pil = resize_bilinear(&img, s, s);
            let pil_worst = max_abs_diff(&pil.data.iter().map(|&a| a as f32).collect::<Vec<_>>(), &want);
            if pil_worst > 5.0 {
                shrunk_differs_from_pil += 1;
            }
        }
    }
    assert!(shrunk_differs_from_pil >= 2, "the fixture's shrinking cases should tell TF from PIL");
}
