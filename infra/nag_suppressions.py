"""Every cdk-nag AwsSolutions suppression of the stack, with its reason, in one reviewed place.

A suppression names the rule and, where the rule reports specific findings (IAM4, IAM5), the
exact findings it accepts, so a new wildcard or managed policy is still reported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdk_nag import NagPackSuppression, NagSuppressions

if TYPE_CHECKING:
    from infra.stack import PolyrouteStack

LAMBDA_BASIC = (
    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
)
APIGW_LOGS = (
    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
)


def apply(stack: PolyrouteStack) -> None:
    """Attach the suppressions to the stack's resources."""
    NagSuppressions.add_stack_suppressions(
        stack,
        [
            NagPackSuppression(
                id="AwsSolutions-IAM4",
                reason="The functions' roles use AWSLambdaBasicExecutionRole (write their own "
                "log streams only) and API Gateway's account role uses the AWS policy made "
                "for pushing its logs; both are narrow AWS-managed policies.",
                applies_to=[LAMBDA_BASIC, APIGW_LOGS],
            ),
            NagPackSuppression(
                id="AwsSolutions-IAM5",
                reason="Wildcards come from grant_* helpers scoped to this stack's resources: "
                "objects of the spill bucket (bucket ARN/*), versions of our own functions "
                "(function ARN:*), the X-Ray trace APIs (which take no resource), the "
                "log-delivery APIs Step Functions needs (no resource-level permissions), and "
                "the batch workflow's own child executions.",
                applies_to=[
                    "Action::s3:GetObject*",
                    "Action::s3:GetBucket*",
                    "Action::s3:List*",
                    "Action::s3:DeleteObject*",
                    "Action::s3:Abort*",
                    {"regex": "/^Resource::<SpillBucket[0-9A-F]{8}\\.Arn>\\/\\*$/"},
                    "Resource::*",
                    {"regex": "/^Resource::<[A-Za-z]+Function[0-9A-F]{8}\\.Arn>:\\*$/"},
                    {"regex": "/^Resource::arn:aws:states:.*polyroute-batch-\\*$/"},
                    {"regex": "/^Resource::arn:<AWS::Partition>:states:.*polyroute-batch-\\*$/"},
                ],
            ),
            NagPackSuppression(
                id="AwsSolutions-DDB3",
                reason="The breaker table holds circuit state that expires within minutes "
                "(failure counts by TTL, open circuits after their cool-down): there is "
                "nothing a point-in-time restore could usefully bring back.",
            ),
            NagPackSuppression(
                id="AwsSolutions-SMG4",
                reason="The secrets hold third-party model API keys (Anthropic, OpenAI) that "
                "only the provider's console can issue; rotation is the operator's, by "
                "updating the secret value.",
            ),
            NagPackSuppression(
                id="AwsSolutions-APIG3",
                reason="Every method needs SigV4 (IAM auth), so anonymous traffic is refused "
                "before it reaches a function; put AWS WAF in front if the API is ever opened "
                "to other principals.",
            ),
            NagPackSuppression(
                id="AwsSolutions-COG4",
                reason="The API authorises callers with IAM (SigV4), not Cognito: callers are "
                "AWS principals (CLI, services), not end users.",
            ),
        ],
    )
