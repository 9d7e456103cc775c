//! Return sites found by decoding a function's machine code. Go moves goroutine stacks, so a
//! uretprobe's rewritten return address can point into freed memory; an entry uprobe on each
//! RET instruction sees every return and never touches the stack.

use crate::image::Arch;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Addresses of the return instructions in `code`, which starts at `address`. `None` when the
/// architecture has no decoder here.
pub fn return_sites(arch: Arch, code: &[u8], address: u64) -> Option<Vec<u64>> {
    match arch {
        Arch::X86_64 => {
            let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
            let mut out = Vec::new();
            // A linear sweep is exact for Go: it never mixes data into text, and the padding
            // between functions is INT3.
            while d.can_decode() {
                let ins = d.decode();
                if ins.mnemonic() == Mnemonic::Ret {
                    out.push(ins.ip());
                }
            }
            Some(out)
        }
        Arch::Aarch64 => Some(
            code.chunks_exact(4)
                .enumerate()
                // RET {Xn}: 1101011 0010 11111 000000 Rn 00000
                .filter(|(_, w)| {
                    u32::from_le_bytes([w[0], w[1], w[2], w[3]]) & 0xffff_fc1f == 0xd65f_0000
                })
                .map(|(i, _)| address + 4 * i as u64)
                .collect(),
        ),
        Arch::Other => None,
    }
}

/// Addresses of the direct calls to `target` in `code`, which starts at `address`: x86-64
/// only (`None` elsewhere, where such probes are not placed).
pub fn call_sites(arch: Arch, code: &[u8], address: u64, target: u64) -> Option<Vec<u64>> {
    if arch != Arch::X86_64 {
        return None;
    }
    let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let ins = d.decode();
        if ins.is_call_near() && ins.near_branch_target() == target {
            out.push(ins.ip());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ret_and_ret_imm_but_not_c3_inside_an_operand() {
        // mov eax, 0xc3; ret; nop; ret 8; int3
        let code = [0xb8, 0xc3, 0, 0, 0, 0xc3, 0x90, 0xc2, 8, 0, 0xcc];
        assert_eq!(
            return_sites(Arch::X86_64, &code, 0x1000),
            Some(vec![0x1005, 0x1007])
        );
    }

    #[test]
    fn finds_direct_calls_to_one_target_only() {
        // call 0x2000 (rel32 from 0x1005); call 0x3000; call rax; call 0x2000 (from 0x1011)
        let mut code = vec![0xe8];
        code.extend_from_slice(&(0x2000i32 - 0x1005).to_le_bytes());
        code.push(0xe8);
        code.extend_from_slice(&(0x3000i32 - 0x100a).to_le_bytes());
        code.extend_from_slice(&[0xff, 0xd0]);
        code.push(0xe8);
        code.extend_from_slice(&(0x2000i32 - 0x1011).to_le_bytes());
        assert_eq!(
            call_sites(Arch::X86_64, &code, 0x1000, 0x2000),
            Some(vec![0x1000, 0x100c])
        );
    }

    #[test]
    fn arm64_ret_words() {
        let mut code = Vec::new();
        for w in [0xd503201fu32, 0xd65f03c0, 0xd65f0200, 0xd63f0200] {
            code.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(
            return_sites(Arch::Aarch64, &code, 0x10),
            Some(vec![0x14, 0x18])
        );
    }
}
