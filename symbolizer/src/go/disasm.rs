//! Struct offsets derived from machine code, for Go releases that neither DWARF nor the table
//! describe. Each rule names a function whose few first instructions read the fields, checked
//! against every toolchain here by the e2e test; a rule that does not match yields nothing, so
//! the caller reports "unknown" rather than a guess.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// A chain of loads that starts at the receiver (RAX under Go's register ABI): the first field
/// is read from the receiver, the next from the pointer that load produced, and so on.
pub struct ChainRule {
    pub function: &'static str,
    pub fields: &'static [(&'static str, &'static str)],
}

pub const CHAIN_RULES: &[ChainRule] = &[
    // return c.conn.LocalAddr()
    ChainRule {
        function: "crypto/tls.(*Conn).LocalAddr",
        fields: &[("crypto/tls.Conn", "conn")],
    },
    // if !c.ok() { return nil }; return c.fd.laddr
    ChainRule {
        function: "net.(*conn).LocalAddr",
        fields: &[("net.conn", "fd"), ("net.netFD", "laddr")],
    },
    ChainRule {
        function: "net.(*conn).RemoteAddr",
        fields: &[("net.conn", "fd"), ("net.netFD", "raddr")],
    },
];

/// `runtime.main` copies the goroutine id of `g` (R14) into a global (`inittrace.id`); the
/// first load from R14 that is stored straight to static memory is that field.
pub const GOID_FUNCTION: &str = "runtime.main";

fn is_load(ins: &Instruction) -> bool {
    matches!(
        ins.mnemonic(),
        Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
    ) && ins.op0_kind() == OpKind::Register
        && ins.op1_kind() == OpKind::Memory
        && ins.memory_index() == Register::None
}

/// How many instructions a rule may look at: the fields are read right after the prologue.
const WINDOW: usize = 64;

/// Offsets of a chain rule's fields, in the rule's order, as far as the code shows them.
pub fn chain_offsets(code: &[u8], address: u64, rule: &ChainRule) -> Vec<Option<u64>> {
    let mut found = vec![None; rule.fields.len()];
    // level[r]: register r holds the pointer that chain step `level` reads from.
    let mut level: Vec<(Register, usize)> = vec![(Register::RAX, 0)];
    let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for _ in 0..WINDOW {
        if !d.can_decode() {
            break;
        }
        let ins = d.decode();
        if ins.is_call_near() || ins.mnemonic() == Mnemonic::Ret || ins.is_invalid() {
            break;
        }
        let dest = (ins.op_count() > 0 && ins.op0_kind() == OpKind::Register)
            .then(|| ins.op0_register().full_register());
        if is_load(&ins) {
            let base = ins.memory_base().full_register();
            if let Some(&(_, k)) = level.iter().find(|(r, _)| *r == base) {
                if k < found.len() {
                    let disp = ins.memory_displacement64();
                    let hit = match found[k] {
                        None => {
                            found[k] = Some(disp);
                            true
                        }
                        Some(known) => known == disp,
                    };
                    let dest = dest.unwrap_or(Register::None);
                    level.retain(|(r, _)| *r != dest);
                    if hit {
                        level.push((dest, k + 1));
                    }
                    if found.iter().all(Option::is_some) {
                        break;
                    }
                    continue;
                }
            }
        }
        let writes = !matches!(ins.mnemonic(), Mnemonic::Cmp | Mnemonic::Test);
        if let (Some(r), true) = (dest, writes) {
            level.retain(|(x, _)| *x != r);
        }
    }
    found
}

/// The offset of `runtime.g.goid`, from `runtime.main`.
pub fn goid_offset(code: &[u8], address: u64) -> Option<u64> {
    let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut pending: Option<(Register, u64)> = None;
    while d.can_decode() {
        let ins = d.decode();
        if ins.is_invalid() {
            return None;
        }
        if is_load(&ins) && ins.memory_base() == Register::R14 {
            pending = Some((
                ins.op0_register().full_register(),
                ins.memory_displacement64(),
            ));
            continue;
        }
        if let Some((reg, disp)) = pending.take() {
            let static_store = ins.mnemonic() == Mnemonic::Mov
                && ins.op0_kind() == OpKind::Memory
                && ins.op1_kind() == OpKind::Register
                && ins.op1_register().full_register() == reg
                && ins.is_ip_rel_memory_operand();
            if static_store {
                return Some(disp);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_two_step_chain() {
        // test rax,rax; mov rcx,[rax]; test rcx,rcx; mov rax,[rcx+0x60]; mov rbx,[rcx+0x68]; ret
        let code = [
            0x48, 0x85, 0xc0, 0x48, 0x8b, 0x08, 0x48, 0x85, 0xc9, 0x48, 0x8b, 0x41, 0x60, 0x48,
            0x8b, 0x59, 0x68, 0xc3,
        ];
        assert_eq!(
            chain_offsets(&code, 0, &CHAIN_RULES[1]),
            vec![Some(0), Some(0x60)]
        );
    }

    #[test]
    fn goid_from_a_static_store() {
        // mov rax,[r14+0x30]; mov rcx,[r14+0xa0]; mov [rip+0x100],rcx
        let code = [
            0x49, 0x8b, 0x46, 0x30, 0x49, 0x8b, 0x8e, 0xa0, 0, 0, 0, 0x48, 0x89, 0x0d, 0, 1, 0, 0,
        ];
        assert_eq!(goid_offset(&code, 0x1000), Some(0xa0));
    }
}
