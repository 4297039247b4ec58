#![no_main]
//! Any bytes fed to the frame decoder give a frame or an error, never a panic; a decoded
//! message re-encodes to a frame that decodes to the same message.

use libfuzzer_sys::fuzz_target;
use shuffle_proto::frame::{encode_frame, Frame};
use shuffle_proto::FrameLimits;

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits { max_meta: 1 << 20, max_body: 1 << 20 };
    let mut rest = data;
    while let Ok((frame, len)) = Frame::decode(rest, &limits) {
        if let Ok(msg) = frame.message() {
            let mut again = Vec::new();
            encode_frame(&msg, frame.body, &mut again).expect("re-encode");
            let (f2, _) = Frame::decode(&again, &limits).expect("re-decode");
            assert_eq!(f2.message().expect("re-decode message"), msg);
        }
        rest = &rest[len..];
    }
});
