"""The SAF audit: ``n`` samples, ``|c_p+|``, ``|c_id+|``, ``|q|`` against ``E|q| = n / N_D`` (``sample_audit``),
the independent copy check (``copies``) and the verdict (``verdict``)."""

from safcore.audit.copies import CopyCheck, copy_check, evenness_test
from safcore.audit.sample_audit import AuditResult, audit
from safcore.audit.verdict import AdversaryRequirements, Verdict
from safcore.measures.bounds import binomial_p_value

__all__ = ["AdversaryRequirements", "AuditResult", "CopyCheck", "Verdict", "audit", "binomial_p_value", "copy_check",
           "evenness_test"]
