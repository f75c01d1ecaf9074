//! Group commit: many concurrent callers, one flush.
//!
//! Making a message durable costs a disk flush, and a flush costs the same for one message
//! as for fifty. When many SMTP sessions commit at once, a [`Group`] collects every
//! request that arrives while a flush is running and serves them all with the next one,
//! so the flushes per second stay bounded by the disk while the messages per second
//! grow with the number of sessions. Each caller still returns only after a flush that
//! started after its request has finished: durability is not traded for speed.
//!
//! The worker is a task on the runtime of the first caller. If that runtime is gone (a
//! store shared across test runtimes), the caller runs the batch function itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

type BatchFn<T, R> =
    Arc<dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Vec<R>> + Send>> + Send + Sync>;

/// Runs a batch function over whatever requests are waiting, one batch at a time.
pub struct Group<T, R> {
    run: BatchFn<T, R>,
    tx: OnceLock<mpsc::UnboundedSender<(T, oneshot::Sender<R>)>>,
    /// Largest batch a single flush serves (bounds the latency of the last caller).
    max: usize,
}

impl<T: Send + 'static, R: Send + 'static> Group<T, R> {
    /// `run` gets the waiting requests and returns one result per request, in order.
    pub fn new<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Group {
            run: Arc::new(move |batch| Box::pin(run(batch))),
            tx: OnceLock::new(),
            max: max.max(1),
        }
    }

    fn sender(&self) -> &mpsc::UnboundedSender<(T, oneshot::Sender<R>)> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(worker(rx, self.run.clone(), self.max));
            tx
        })
    }

    /// Submit one request and wait for the flush that covers it. `None` when the worker
    /// stopped with the request in flight (its runtime shut down): the caller must treat
    /// the request as failed.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        match self.sender().send((item, reply)) {
            Ok(()) => answer.await.ok(),
            Err(mpsc::error::SendError((item, _))) => (self.run)(vec![item]).await.pop(),
        }
    }
}

async fn worker<T, R>(
    mut rx: mpsc::UnboundedReceiver<(T, oneshot::Sender<R>)>,
    run: BatchFn<T, R>,
    max: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut items = vec![first.0];
        let mut replies = vec![first.1];
        while items.len() < max {
            match rx.try_recv() {
                Ok((item, reply)) => {
                    items.push(item);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let results = run(items).await;
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_flushes_and_get_their_own_results() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = flushes.clone();
        let group = Arc::new(Group::new(64, move |batch: Vec<u32>| {
            let f = f.clone();
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                batch.into_iter().map(|x| x * 2).collect::<Vec<_>>()
            }
        }));
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let g = group.clone();
            tasks.push(tokio::spawn(async move { (i, g.submit(i).await.unwrap()) }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            assert_eq!(r, i * 2);
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!(n < 50, "50 concurrent requests took {n} flushes");
    }
}
