//! CRC-32 that guards every frame: CRC-32/ISO-HDLC, the one in zlib, PNG and Ethernet, so a
//! host can check frames with `zlib.crc32`, `binascii.crc32` or `java.util.zip.CRC32`.

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32/ISO-HDLC of `bytes`: polynomial 0x04C11DB7 (reflected 0xEDB88320), initial value
/// 0xFFFFFFFF, input and output reflected, final XOR 0xFFFFFFFF; check value 0xCBF43926.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value() {
        // The catalogue check value: CRC of ASCII "123456789".
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(super::crc32(b""), 0);
    }
}
