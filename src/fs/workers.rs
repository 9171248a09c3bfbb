//! A few threads for the requests that take long (large READs, fsync), so that the single
//! dispatching thread (see `linger`) keeps answering the others meanwhile, and the
//! decryption of read-ahead READs sent together uses both cores.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct Workers {
    queue: Sender<Job>,
}

impl Workers {
    pub fn start(threads: usize) -> std::io::Result<Workers> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = jobs.clone();
            std::thread::Builder::new().name(format!("kmsfs-io-{i}")).spawn(move || loop {
                // The lock is held only while waiting for a job, not while running it.
                let job = jobs.lock().expect("job queue lock").recv();
                match job {
                    Ok(job) => job(),
                    Err(_) => return, // the filesystem is gone
                }
            })?;
        }
        Ok(Workers { queue })
    }

    /// Runs `job` on a worker thread (on this one if none can take it).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        if let Err(mpsc::SendError(job)) = self.queue.send(Box::new(job)) {
            job();
        }
    }
}
