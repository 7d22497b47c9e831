//! The gRPC codec of the actseal API: prost's, except that a request body that does not decode
//! is the caller's mistake. tonic-prost answers every `prost::DecodeError` INTERNAL; a truncated
//! message, a bad tag or varint, or invalid UTF-8 in a `string` field is answered
//! INVALID_ARGUMENT here, with prost's message, which names the message and field it was
//! decoding (`SignRequest.action_type: invalid string value: data is not UTF-8 encoded`).
//!
//! Why at the codec: the bytes never reach a handler, so no handler can map them, and a codec
//! is the one place tonic lets us change the answer for every method at once (build.rs names it
//! with `codec_path`). Decoding `string` fields as `bytes` and validating later would name the
//! field too, but would change every generated type and every handler.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost's codec with decoding errors answered INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ApiCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        ApiCodec(PhantomData)
    }
}

impl<T, U> Codec for ApiCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ApiDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ApiDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Decodes `U`; a body that is not a valid `U` is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ApiDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ApiDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // Decoded here rather than through the inner decoder: its error is already a Status
        // whose text would have to be parsed back.
        U::decode(buf)
            .map(Some)
            .map_err(|e| invalid_message(short_type_name::<U>(), &e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `SignRequest.action_type: invalid string value: …`, or `SignRequest: …` when prost could
/// not tell the field (a bad tag or wire type before any field).
fn invalid_message(message: &str, error: &prost::DecodeError) -> Status {
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let text = if text.starts_with(&format!("{message}.")) {
        text.to_owned()
    } else {
        format!("{message}: {text}")
    };
    tracing::debug!(error = %text, "request body does not decode");
    Status::invalid_argument(text)
}

fn short_type_name<U>() -> &'static str {
    let name = std::any::type_name::<U>();
    name.rsplit("::").next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SignRequest;

    fn answer(bytes: &[u8]) -> Status {
        let error = SignRequest::decode(bytes).expect_err("malformed");
        invalid_message(short_type_name::<SignRequest>(), &error)
    }

    #[test]
    fn decode_errors_are_invalid_argument_naming_the_field() {
        let status = answer(&[0x12, 0x02, 0xff, 0xfe]);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("SignRequest.action_type: invalid string"),
            "{}",
            status.message()
        );
        let status = answer(&[0x0f]);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("SignRequest: "),
            "{}",
            status.message()
        );
    }
}
