//! The async runtime openraft runs on.
//!
//! In a normal build this is openraft's own `TokioRuntime`. Under
//! `--cfg madsim` it is `MadsimRuntime`, which routes every spawn, sleep,
//! timeout, clock read and random draw through madsim, so a simulated run is
//! a pure function of its seed. openraft's `TokioRuntime` cannot be used there:
//! it reads the real clock and draws from `rand::thread_rng()`.

#[cfg(not(madsim))]
pub type Runtime = openraft::TokioRuntime;

#[cfg(madsim)]
pub type Runtime = sim::MadsimRuntime;

#[cfg(madsim)]
mod sim {
    use std::future::Future;
    use std::ops::{Add, AddAssign, Sub, SubAssign};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use openraft::{AsyncRuntime, OptionalSend};

    /// openraft's runtime trait implemented on madsim's task, time and rand.
    #[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
    pub struct MadsimRuntime;

    /// A point on madsim's simulated monotonic clock.
    ///
    /// madsim intercepts `std::time::Instant::now`, so the wrapped value is
    /// simulated time; the newtype exists because openraft's `Instant` trait
    /// is only implemented for tokio's instant.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct SimInstant(madsim::time::Instant);

    impl openraft::Instant for SimInstant {
        fn now() -> Self {
            SimInstant(madsim::time::Instant::now())
        }
    }

    impl Add<Duration> for SimInstant {
        type Output = SimInstant;

        fn add(self, rhs: Duration) -> SimInstant {
            SimInstant(self.0 + rhs)
        }
    }

    impl AddAssign<Duration> for SimInstant {
        fn add_assign(&mut self, rhs: Duration) {
            self.0 += rhs;
        }
    }

    impl Sub<Duration> for SimInstant {
        type Output = SimInstant;

        fn sub(self, rhs: Duration) -> SimInstant {
            SimInstant(self.0 - rhs)
        }
    }

    impl Sub<SimInstant> for SimInstant {
        type Output = Duration;

        fn sub(self, rhs: SimInstant) -> Duration {
            self.0.saturating_duration_since(rhs.0)
        }
    }

    impl SubAssign<Duration> for SimInstant {
        fn sub_assign(&mut self, rhs: Duration) {
            self.0 -= rhs;
        }
    }

    pin_project_lite::pin_project! {
        /// A future that fails with `Elapsed` when its sleep fires first.
        pub struct SimTimeout<T> {
            #[pin]
            future: T,
            #[pin]
            sleep: madsim::time::Sleep,
        }
    }

    impl<T: Future> Future for SimTimeout<T> {
        type Output = Result<T::Output, madsim::time::error::Elapsed>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            if let Poll::Ready(output) = this.future.poll(cx) {
                return Poll::Ready(Ok(output));
            }
            match this.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(madsim::time::error::Elapsed)),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    /// The sending half of a oneshot channel, wrapped for openraft's trait.
    pub struct SimOneshotSender<T>(tokio::sync::oneshot::Sender<T>);

    impl<T> std::fmt::Debug for SimOneshotSender<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("SimOneshotSender")
        }
    }

    impl<T: OptionalSend> openraft::async_runtime::AsyncOneshotSendExt<T> for SimOneshotSender<T> {
        fn send(self, value: T) -> Result<(), T> {
            self.0.send(value)
        }
    }

    impl AsyncRuntime for MadsimRuntime {
        type JoinError = madsim::task::JoinError;
        type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
        type Sleep = madsim::time::Sleep;
        type Instant = SimInstant;
        type TimeoutError = madsim::time::error::Elapsed;
        type Timeout<R, T: Future<Output = R> + OptionalSend> = SimTimeout<T>;
        type ThreadLocalRng = madsim::rand::GlobalRng;
        type OneshotSender<T: OptionalSend> = SimOneshotSender<T>;
        type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
        type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

        fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
        where
            T: Future + OptionalSend + 'static,
            T::Output: OptionalSend + 'static,
        {
            madsim::task::spawn(future)
        }

        fn sleep(duration: Duration) -> Self::Sleep {
            madsim::time::sleep(duration)
        }

        fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
            madsim::time::sleep_until(deadline.0)
        }

        fn timeout<R, F: Future<Output = R> + OptionalSend>(
            duration: Duration,
            future: F,
        ) -> Self::Timeout<R, F> {
            SimTimeout {
                future,
                sleep: madsim::time::sleep(duration),
            }
        }

        fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
            deadline: Self::Instant,
            future: F,
        ) -> Self::Timeout<R, F> {
            SimTimeout {
                future,
                sleep: madsim::time::sleep_until(deadline.0),
            }
        }

        fn is_panic(join_error: &Self::JoinError) -> bool {
            join_error.is_panic()
        }

        fn thread_rng() -> Self::ThreadLocalRng {
            madsim::rand::thread_rng()
        }

        fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
        where
            T: OptionalSend,
        {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            (SimOneshotSender(sender), receiver)
        }
    }
}
