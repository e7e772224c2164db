//! A ranker folder from bytes: `config.json` text, then (after the first NUL byte) the bytes of
//! `model.safetensors`, checked against the config as `RankerModel::load` checks them; a model that
//! loads runs its warm-up request as the server does after loading.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slate::ranking::{RankerConfig, RankerModel};

fuzz_target!(|data: &[u8]| {
    let (config, weights) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(config) else { return };
    let Ok(cfg) = RankerConfig::from_json(text) else { return };
    let Ok(model) = RankerModel::from_config_and_bytes(cfg, weights) else { return };
    let _ = model.rank(&model.warmup_request(), slate::ranking::warmup::REQUEST_TIME_MS);
});
