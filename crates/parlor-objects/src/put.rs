//! Streaming a body into one object with bounded memory.

use crate::{PARTS_IN_FLIGHT, PART_SIZE};
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayloadMut, WriteMultipart};
use parlor_core::ports::{ByteStream, Written};
use std::sync::Arc;

/// Where the bytes received so far are: still in memory (the body may turn out small
/// enough for one request), or in a multipart upload once they passed a part's size.
enum Sink {
    Buffer(PutPayloadMut),
    Multipart(WriteMultipart),
}

/// Stores everything `body` yields at `path`. A body error ends the body: what arrived is
/// stored and the error is returned in [`Written::cut`]. `Err` only for storage errors,
/// after aborting a multipart upload so that the service drops its parts.
pub(crate) async fn stream_into(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    mut body: ByteStream,
) -> object_store::Result<Written> {
    let mut sink = Sink::Buffer(PutPayloadMut::new());
    let mut bytes = 0u64;
    let mut cut = None;
    while let Some(next) = body.next().await {
        let chunk = match next {
            Ok(chunk) => chunk,
            Err(e) => {
                cut = Some(e);
                break;
            }
        };
        bytes += chunk.len() as u64;
        match &mut sink {
            Sink::Buffer(buffer) if buffer.content_length() + chunk.len() < PART_SIZE => {
                buffer.push(chunk);
            }
            Sink::Buffer(buffer) => {
                let buffered = std::mem::take(buffer).freeze();
                let upload = store.put_multipart(path).await?;
                let mut multipart = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                for piece in buffered {
                    multipart.put(piece);
                }
                multipart.put(chunk);
                sink = Sink::Multipart(multipart);
            }
            Sink::Multipart(multipart) => {
                // Waiting here is what bounds memory: the body is not read further while
                // the service is behind.
                if let Err(e) = multipart.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    if let Sink::Multipart(multipart) = sink {
                        abort(multipart, path).await;
                    }
                    return Err(e);
                }
                multipart.put(chunk);
            }
        }
    }
    // Releases the body (and the request it reads) before the last call to the service,
    // which may take a while for a large object.
    drop(body);
    match sink {
        Sink::Buffer(buffer) => {
            store.put(path, buffer.freeze()).await?;
        }
        Sink::Multipart(mut multipart) => {
            // `finish` aborts when completing fails but not when a part fails, so the
            // parts are awaited here first, where a failure can still abort.
            if let Err(e) = multipart.wait_for_capacity(0).await {
                abort(multipart, path).await;
                return Err(e);
            }
            multipart.finish().await?;
        }
    }
    Ok(Written { bytes, cut })
}

async fn abort(multipart: WriteMultipart, path: &Path) {
    if let Err(e) = multipart.abort().await {
        // The service keeps the parts until a lifecycle rule removes them.
        tracing::warn!(key = %path, error = %e, "multipart abort failed");
    }
}
