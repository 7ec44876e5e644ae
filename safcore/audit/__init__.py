"""The SAF audit: ``n`` samples, ``|c_p+|``, ``|c_id+|``, ``|q|`` against ``E|q| = n / N_D``, the copy check
and the verdict (``sample_audit``)."""

from safcore.audit.sample_audit import (
    AdversaryRequirements,
    AuditResult,
    CopyCheck,
    Verdict,
    audit,
    binomial_p_value,
    copy_check,
    evenness_test,
)

__all__ = ["AdversaryRequirements", "AuditResult", "CopyCheck", "Verdict", "audit", "binomial_p_value", "copy_check",
           "evenness_test"]
