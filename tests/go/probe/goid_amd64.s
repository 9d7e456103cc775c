#include "textflag.h"

// func getg() uintptr: the current goroutine's g, read from thread-local storage the way the
// runtime does, so the offset search below does not depend on anything sightline computes.
TEXT ·getg(SB),NOSPLIT,$0-8
	MOVQ TLS, CX
	MOVQ 0(CX)(TLS*1), AX
	MOVQ AX, ret+0(FP)
	RET
