//! The gRPC codec of the client API: prost encoding, with small initial
//! buffers.
//!
//! tonic gives every call an 8 KiB encode buffer and an 8 KiB decode
//! buffer by default (tonic 0.14, `codec::BufferSettings`). A device
//! session keeps both for as long as it is connected, which is about
//! 16 KiB per session before it carries a single event. Client events and most server
//! events are a few hundred bytes, and the buffers grow when a larger
//! message comes, so starting at 1 KiB costs a reallocation only for the
//! rare large message. The generated stubs of `parley.v1` use this codec
//! natively; the simulated stubs pass messages in memory and need none.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffers.
const INITIAL_BUFFER_BYTES: usize = 1024;

/// Encoded bytes after which a streaming call yields to other tasks; the
/// tonic default.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// A prost codec whose buffers start at `INITIAL_BUFFER_BYTES`.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec {
            _messages: PhantomData,
        }
    }
}

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffer_settings())
    }
}
