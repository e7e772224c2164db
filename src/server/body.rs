//! Request bodies read whole before a request takes an admission slot: under the route's byte limit,
//! within `limits.body_read_timeout_s`, and inside a server-wide budget of bytes being received
//! (`limits.max_buffered_body_bytes`), reserved as the bytes arrive so a slow sender holds only what
//! it has sent. Also a pre-scan of protobuf messages that counts repeated fields before any decoding.

use crate::error::Error;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request body type the front layer can read whole and rebuild from the bytes.
pub trait Buffered: http_body::Body<Data = Bytes> + Send + Unpin + Sized + 'static
where
    Self::Error: std::fmt::Display,
{
    /// Bytes a body may carry beyond its message (gRPC's 5-byte length prefix).
    const FRAMING: usize;
    fn from_bytes(bytes: Bytes) -> Self;
}

impl Buffered for axum::body::Body {
    const FRAMING: usize = 0;
    fn from_bytes(bytes: Bytes) -> Self {
        axum::body::Body::from(bytes)
    }
}

impl Buffered for tonic::body::Body {
    const FRAMING: usize = 5;
    fn from_bytes(bytes: Bytes) -> Self {
        tonic::body::Body::new(http_body_util::Full::new(bytes))
    }
}

/// Reads `body` whole: at most `limit` bytes (413 past it), within `timeout` (408), reserving each
/// chunk in `budget` as it arrives (429 when the budget is spent). The permit holds the bytes'
/// reservation; keep it until the request is done with them.
pub async fn read<B: Buffered>(
    body: B,
    limit: usize,
    timeout: Duration,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Error>
where
    B::Error: std::fmt::Display,
{
    let read = async {
        let mut body = body;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let mut held: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Error::BadRequest(format!("could not read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            total = total.saturating_add(data.len());
            if total > limit {
                return Err(Error::PayloadTooLarge { limit });
            }
            let n = u32::try_from(data.len()).map_err(|_| Error::PayloadTooLarge { limit })?;
            let permit = Arc::clone(budget).try_acquire_many_owned(n).map_err(|_| {
                crate::metrics::rejection(crate::metrics::NO_MODEL, crate::metrics::REJECT_BODY_BUDGET);
                Error::ResourceExhausted {
                    message: "server is at capacity: limits.max_buffered_body_bytes of request bodies are being received"
                        .into(),
                    retry_after_ms: 100,
                }
            })?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            chunks.push(data);
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().expect("one chunk"),
            _ => {
                let mut all = BytesMut::with_capacity(total);
                for c in &chunks {
                    all.extend_from_slice(c);
                }
                all.freeze()
            }
        };
        Ok((bytes, held))
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        Error::RequestTimeout(format!(
            "the request body did not arrive within limits.body_read_timeout_s = {}",
            timeout.as_secs_f64()
        ))
    })?
}

/// How often each of `fields` occurs at the top level of the protobuf message in a gRPC body
/// (uncompressed, one message), or `None` when the body is not that: then the decoder, which checks
/// everything, has the last word. Reads only tags and lengths; allocates nothing.
pub fn count_grpc_fields<const N: usize>(body: &[u8], fields: [u32; N]) -> Option<[usize; N]> {
    let (head, rest) = body.split_first_chunk::<5>()?;
    let [flag, a, b, c, d] = *head;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if flag != 0 || rest.len() != len {
        return None;
    }
    let mut counts = [0usize; N];
    let mut at = rest;
    while !at.is_empty() {
        let key = varint(&mut at)?;
        let field = u32::try_from(key >> 3).ok()?;
        let skip = match key & 7 {
            0 => {
                varint(&mut at)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut at)?).ok()?,
            5 => 4,
            _ => return None, // groups (3, 4) and invalid wire types: leave it to the decoder
        };
        at = at.get(skip..)?;
        if let Some(i) = fields.iter().position(|&f| f == field) {
            counts[i] += 1;
        }
    }
    Some(counts)
}

fn varint(at: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = at.split_first()?;
        *at = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn framed(msg: &impl Message) -> Vec<u8> {
        let m = msg.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(&m);
        out
    }

    #[test]
    fn counts_repeated_fields_like_the_decoder() {
        use crate::proto::slate::v1 as pb;
        let req = pb::RankRequest {
            model: "m".into(),
            member_id: 7,
            member_dense: vec![1.0, 2.0],
            history: vec![pb::HistoryEvent::default(); 300],
            candidates: vec![pb::Candidate { item_id: 3, ..Default::default() }; 5],
            top_k: Some(2),
            ..Default::default()
        };
        let body = framed(&req);
        assert_eq!(count_grpc_fields(&body, [5, 6]), Some([300, 5]));
        // Not one uncompressed message of the stated length: no answer, the decoder decides.
        assert_eq!(count_grpc_fields(&body[..body.len() - 1], [5]), None);
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(count_grpc_fields(&compressed, [5]), None);
        assert_eq!(count_grpc_fields(&[0, 0, 0, 0, 2, 0x2a, 0x05], [5]), None, "length past the end");
        assert_eq!(count_grpc_fields(&[0, 0, 0, 0, 0], [5]), Some([0]));
    }

    #[tokio::test]
    async fn reads_whole_bodies_under_the_limit_and_budget() {
        let budget = Arc::new(Semaphore::new(100));
        let t = Duration::from_secs(5);
        let body = axum::body::Body::from("0123456789");
        let (bytes, permit) = read(body, 10, t, &budget).await.unwrap();
        assert_eq!(&bytes[..], b"0123456789");
        assert_eq!(budget.available_permits(), 90);
        drop(permit);
        assert_eq!(budget.available_permits(), 100);

        let e = read(axum::body::Body::from("0123456789"), 9, t, &budget).await.unwrap_err();
        assert_eq!(e.http_status(), 413);
        let small = Arc::new(Semaphore::new(5));
        let e = read(axum::body::Body::from("0123456789"), 10, t, &small).await.unwrap_err();
        assert_eq!(e.http_status(), 429);
        assert_eq!(small.available_permits(), 5, "a refused body gives back what it reserved");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        let budget = Arc::new(Semaphore::new(100));
        let body = axum::body::Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let e = read(body, 10, Duration::from_secs(3), &budget).await.unwrap_err();
        assert_eq!(e.http_status(), 408);
    }
}
