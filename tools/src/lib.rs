//! slate-tools: the offline work around the Slate server, kept out of the serving library. Training the
//! demo ranker on MovieLens-100K (`train`, `movielens`), the ranker and SLM benchmarks (`bench`), and the
//! synthetic configs, requests and tiny GGUF models the tests and benchmarks run on (`testkit`).
//! Compressing a GGUF model into a compressed model folder (`compress`), and measuring a model's
//! perplexity on text (`eval`). The `slate-tools` binary (also reached as `slate train-ranker`,
//! `slate bench …`, `slate compress`, `slate eval …`) parses `cli`.

pub mod bench;
pub mod cli;
pub mod compress;
pub mod eval;
pub mod movielens;
pub mod testkit;
pub mod train;
