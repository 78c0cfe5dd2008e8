// AKS cluster with three autoscaled pools: `system` (tainted CriticalAddonsOnly,
// AKS add-ons only), `services` (the chart's long-lived services) and
// `taskworkers` (tainted, flow pods only), plus two optional ones, off by
// default: `gpu` (NVIDIA, part of the task workers) and `spot` (Spot VMs,
// evicted at Azure's will). Local accounts are disabled: every
// kubeconfig, including the one `mfhelm install` fetches, is a user kubeconfig
// authenticated with Entra ID and authorised by Azure RBAC.
// The `mfhelm.io/pool` labels and taints are part of the contract with the
// chart and `mfhelm config`: flow pods select and tolerate exactly these.

@description('Azure region for the cluster.')
param location string

@description('Short organisation prefix used in every resource name.')
param orgPrefix string

@description('Deterministic suffix that keeps the DNS prefix unique.')
param nameSuffix string

@description('Kubernetes version as major.minor (main.bicep checks the form), or empty for the AKS default for the region.')
param kubernetesVersion string = ''

@description('AKS pricing tier: Standard carries the uptime SLA, Free does not.')
@allowed([
  'Free'
  'Standard'
])
param skuTier string = 'Standard'

@description('Name of the virtual network that holds the node subnet.')
param vnetName string

@description('Name of the node subnet inside vnetName.')
param nodeSubnetName string

@description('VM size of the system pool.')
param systemVmSize string

@description('Minimum node count of the system pool.')
@minValue(1)
@maxValue(1000)
param systemMinCount int

@description('Maximum node count of the system pool.')
@minValue(1)
@maxValue(1000)
param systemMaxCount int

@description('VM size of the services pool.')
param servicesVmSize string

@description('Minimum node count of the services pool.')
@minValue(1)
@maxValue(1000)
param servicesMinCount int

@description('Maximum node count of the services pool.')
@minValue(1)
@maxValue(1000)
param servicesMaxCount int

@description('VM size of the taskworkers pool.')
param taskVmSize string

@description('Minimum node count of the taskworkers pool (0 lets it scale to zero).')
@minValue(0)
@maxValue(1000)
param taskMinCount int

@description('Maximum node count of the taskworkers pool.')
@minValue(1)
@maxValue(1000)
param taskMaxCount int

@description('Whether to create the GPU pool (`gpu`): task workers with NVIDIA GPUs, tainted so that only pods requesting nvidia.com/gpu land there.')
param gpuPoolEnabled bool = false

@description('VM size of the GPU pool (an NVIDIA size).')
param gpuVmSize string = 'Standard_NC4as_T4_v3'

@description('Minimum node count of the GPU pool (0 lets it scale to zero).')
@minValue(0)
@maxValue(1000)
param gpuMinCount int = 0

@description('Maximum node count of the GPU pool.')
@minValue(1)
@maxValue(1000)
param gpuMaxCount int = 2

@description('Whether to create the Spot pool (`spot`): Spot VMs for retryable steps that select it.')
param spotPoolEnabled bool = false

@description('VM size of the Spot pool.')
param spotVmSize string = 'Standard_D4s_v5'

@description('Minimum node count of the Spot pool (0 lets it scale to zero).')
@minValue(0)
@maxValue(1000)
param spotMinCount int = 0

@description('Maximum node count of the Spot pool.')
@minValue(1)
@maxValue(1000)
param spotMaxCount int = 5

@description('Current node count of each pool that already exists, keyed by pool name; empty on the first deploy.')
param existingPoolCounts object = {}

@description('Object ID of the deployer, who runs `mfhelm install` against the cluster.')
param deployerPrincipalId string

@description('Type of the deployer principal.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Whether to enable the application-routing add-on (managed NGINX, Ingress class webapprouting.kubernetes.azure.com): on when [access] host is set.')
param appRoutingEnabled bool = false

@description('Whether to enable the Key Vault secrets provider add-on (Secrets Store CSI driver), which the application-routing add-on needs to serve a Key Vault certificate.')
param keyVaultSecretsProviderEnabled bool = false

@description('Tags applied to every resource.')
param tags object = {}

// With local accounts off, the deployer reaches the API server only through
// Azure RBAC; cluster admin is what installing the chart (CRDs, RBAC) needs.
var aksRbacClusterAdminRoleId = 'b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b'
var maxPodsPerNode = 110

// Every pool sets `count`: without it AKS assumes 1, and refuses a pool whose
// minCount is 2 or more (it requires minCount <= count <= maxCount). A new
// pool starts at its minimum; a pool that already exists is sent the size it
// has now (mfhelm reads it before deploying), so a re-deploy never scales away
// what the autoscaler chose. Clamping keeps the value valid when the bounds
// changed, which is then the scale the new bounds ask for.
var systemCount = min(max(contains(existingPoolCounts, 'system') ? int(existingPoolCounts.system) : systemMinCount, systemMinCount), systemMaxCount)
var servicesCount = min(max(contains(existingPoolCounts, 'services') ? int(existingPoolCounts.services) : servicesMinCount, servicesMinCount), servicesMaxCount)
var taskCount = min(max(contains(existingPoolCounts, 'taskworkers') ? int(existingPoolCounts.taskworkers) : taskMinCount, taskMinCount), taskMaxCount)
var gpuCount = min(max(contains(existingPoolCounts, 'gpu') ? int(existingPoolCounts.gpu) : gpuMinCount, gpuMinCount), gpuMaxCount)
var spotCount = min(max(contains(existingPoolCounts, 'spot') ? int(existingPoolCounts.spot) : spotMinCount, spotMinCount), spotMaxCount)

resource vnet 'Microsoft.Network/virtualNetworks@2025-09-01' existing = {
  name: vnetName
}

resource nodeSubnet 'Microsoft.Network/virtualNetworks/subnets@2025-09-01' existing = {
  parent: vnet
  name: nodeSubnetName
}

resource aks 'Microsoft.ContainerService/managedClusters@2025-07-01' = {
  // checkov:skip=CKV_AZURE_6:the API server stays reachable from the operator laptop for mfhelm install (no private cluster, no IP allow-list); access needs Entra ID + Azure RBAC and local accounts are off
  // checkov:skip=CKV_AZURE_4:Container Insights needs a Log Analytics workspace the operator chooses; not created by this stack
  // checkov:skip=CKV_AZURE_226:ephemeral OS disks need a VM size with a large enough cache or temp disk; the default sizes have none
  // checkov:skip=CKV_AZURE_227:encryption at host needs the EncryptionAtHost feature registered on the subscription
  // checkov:skip=CKV_AZURE_172:the Secrets Store CSI add-on is on only with a Key Vault certificate for the entry point, and then with rotation on; checkov cannot tell the two cases apart
  // checkov:skip=CKV_AZURE_8:the Kubernetes Dashboard add-on no longer exists on AKS (removed with 1.19), nothing to disable
  name: '${orgPrefix}-aks'
  location: location
  tags: tags
  sku: {
    name: 'Base'
    tier: skuTier
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    kubernetesVersion: empty(kubernetesVersion) ? null : kubernetesVersion
    dnsPrefix: '${orgPrefix}-${nameSuffix}'
    enableRBAC: true
    disableLocalAccounts: true
    aadProfile: {
      managed: true
      enableAzureRBAC: true
      tenantID: tenant().tenantId
    }
    oidcIssuerProfile: {
      enabled: true
    }
    securityProfile: {
      workloadIdentity: {
        enabled: true
      }
    }
    autoUpgradeProfile: {
      upgradeChannel: 'patch'
      nodeOSUpgradeChannel: 'NodeImage'
    }
    addonProfiles: {
      azurepolicy: {
        enabled: true
      }
      // Only the application-routing add-on's identity reads through it, and
      // only the certificate it was granted (tls-certificate-role.bicep).
      // Rotation picks up a renewed certificate without a restart.
      azureKeyvaultSecretsProvider: {
        enabled: keyVaultSecretsProviderEnabled
        config: keyVaultSecretsProviderEnabled ? {
          enableSecretRotation: 'true'
          rotationPollInterval: '2m'
        } : null
      }
    }
    // Managed NGINX for the HTTPS entry point. The default controller is
    // External (a public load balancer); the chart's Ingress uses its class.
    // No DNS zones: the host's record is the user's (README).
    ingressProfile: {
      webAppRouting: {
        enabled: appRoutingEnabled
        nginx: appRoutingEnabled ? {
          defaultIngressControllerType: 'External'
        } : null
      }
    }
    networkProfile: {
      networkPlugin: 'azure'
      networkPluginMode: 'overlay'
      networkDataplane: 'cilium'
      networkPolicy: 'cilium'
      podCidr: '192.168.0.0/16'
      serviceCidr: '172.16.0.0/16'
      dnsServiceIP: '172.16.0.10'
      loadBalancerSku: 'standard'
      outboundType: 'loadBalancer'
    }
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        osType: 'Linux'
        type: 'VirtualMachineScaleSets'
        vmSize: systemVmSize
        vnetSubnetID: nodeSubnet.id
        maxPods: maxPodsPerNode
        enableAutoScaling: true
        count: systemCount
        minCount: systemMinCount
        maxCount: systemMaxCount
        nodeTaints: [
          'CriticalAddonsOnly=true:NoSchedule'
        ]
      }
      {
        name: 'services'
        mode: 'User'
        osType: 'Linux'
        type: 'VirtualMachineScaleSets'
        vmSize: servicesVmSize
        vnetSubnetID: nodeSubnet.id
        maxPods: maxPodsPerNode
        enableAutoScaling: true
        count: servicesCount
        minCount: servicesMinCount
        maxCount: servicesMaxCount
        nodeLabels: {
          'mfhelm.io/pool': 'services'
        }
      }
      {
        name: 'taskworkers'
        mode: 'User'
        osType: 'Linux'
        type: 'VirtualMachineScaleSets'
        vmSize: taskVmSize
        vnetSubnetID: nodeSubnet.id
        maxPods: maxPodsPerNode
        enableAutoScaling: true
        count: taskCount
        minCount: taskMinCount
        maxCount: taskMaxCount
        nodeLabels: {
          'mfhelm.io/pool': 'taskworkers'
        }
        nodeTaints: [
          'mfhelm.io/pool=taskworkers:NoSchedule'
        ]
      }
    ]
  }
}

// The optional pools are agentPools resources of their own, not entries of
// agentPoolProfiles: AKS creates and updates a child pool through its own API
// on a cluster that already exists (turning a pool on later is an ordinary
// re-deploy), and a cluster PUT whose agentPoolProfiles leave a pool out does
// not delete it. Turning a pool off therefore stops declaring it without
// removing it: `az aks nodepool delete` does (bicep/README.md).

// GPU task workers: the task workers' label and taint (so the Metaflow config's
// one node selector and toleration reach them) plus the nvidia.com/gpu taint,
// which only a pod that requests nvidia.com/gpu tolerates (Kubernetes'
// ExtendedResourceToleration admission plugin, on in AKS). AKS installs the
// NVIDIA driver on the nodes (gpuProfile.driver Install, GA at this API
// version); the chart runs the device plugin that advertises nvidia.com/gpu.
resource gpuPool 'Microsoft.ContainerService/managedClusters/agentPools@2025-07-01' = if (gpuPoolEnabled) {
  // checkov:skip=CKV_AZURE_227:encryption at host needs the EncryptionAtHost feature registered on the subscription
  // checkov:skip=CKV_AZURE_168:checkov reads no property of a conditional resource (it sees no maxPods); maxPods is maxPodsPerNode, 110, as on every pool (tests/bicep/test_bicep_compute.py)
  parent: aks
  name: 'gpu'
  properties: {
    mode: 'User'
    osType: 'Linux'
    type: 'VirtualMachineScaleSets'
    vmSize: gpuVmSize
    vnetSubnetID: nodeSubnet.id
    maxPods: maxPodsPerNode
    enableAutoScaling: true
    count: gpuCount
    minCount: gpuMinCount
    maxCount: gpuMaxCount
    gpuProfile: {
      driver: 'Install'
    }
    nodeLabels: {
      'mfhelm.io/pool': 'taskworkers'
      'mfhelm.io/accelerator': 'nvidia'
    }
    nodeTaints: [
      'mfhelm.io/pool=taskworkers:NoSchedule'
      'nvidia.com/gpu=true:NoSchedule'
    ]
  }
}

// Spot task workers, for steps that select mfhelm.io/pool=spot (and should
// carry @retry: an evicted node takes its pods with it). Evicted VMs are
// deleted, not deallocated (their cores stop counting against the Spot
// quota); the price cap is the on-demand price (-1), so nodes are evicted for
// capacity only, never for price. AKS labels and taints Spot nodes itself
// (kubernetes.azure.com/scalesetpriority=spot); the taint is declared too so
// that the pool's definition matches what AKS reports.
resource spotPool 'Microsoft.ContainerService/managedClusters/agentPools@2025-07-01' = if (spotPoolEnabled) {
  // checkov:skip=CKV_AZURE_227:encryption at host needs the EncryptionAtHost feature registered on the subscription
  // checkov:skip=CKV_AZURE_168:checkov reads no property of a conditional resource (it sees no maxPods); maxPods is maxPodsPerNode, 110, as on every pool (tests/bicep/test_bicep_compute.py)
  parent: aks
  name: 'spot'
  // One pool operation at a time on the cluster.
  dependsOn: [
    gpuPool
  ]
  properties: {
    mode: 'User'
    osType: 'Linux'
    type: 'VirtualMachineScaleSets'
    vmSize: spotVmSize
    vnetSubnetID: nodeSubnet.id
    maxPods: maxPodsPerNode
    enableAutoScaling: true
    count: spotCount
    minCount: spotMinCount
    maxCount: spotMaxCount
    scaleSetPriority: 'Spot'
    scaleSetEvictionPolicy: 'Delete'
    spotMaxPrice: -1
    nodeLabels: {
      'mfhelm.io/pool': 'spot'
    }
    nodeTaints: [
      'kubernetes.azure.com/scalesetpriority=spot:NoSchedule'
    ]
  }
}

// Network Contributor on the node subnet, in a module so that the assignment
// can be named from the cluster's principal ID (see subnet-role.bicep).
module subnetRole 'subnet-role.bicep' = {
  name: 'mfhelm-aks-subnet-role'
  params: {
    vnetName: vnetName
    subnetName: nodeSubnetName
    principalId: aks.identity.principalId
  }
}

resource deployerClusterAdmin 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(aks.id, deployerPrincipalId, aksRbacClusterAdminRoleId)
  scope: aks
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', aksRbacClusterAdminRoleId)
  }
}

@description('Name of the AKS cluster.')
output clusterName string = aks.name

@description('OIDC issuer URL of the cluster, the issuer of every federated credential.')
output oidcIssuerUrl string = aks.properties.oidcIssuerProfile.issuerURL

// The add-on's identity exists only while the add-on is on; ARM evaluates only
// the branch of the ?: that is taken.
@description('Object ID of the application-routing add-on\'s managed identity, or empty when the add-on is off.')
output appRoutingPrincipalId string = appRoutingEnabled ? aks.properties.ingressProfile.webAppRouting.identity.objectId : ''

@description('Object ID of the kubelet identity (the nodes\' identity, which pulls images).')
output kubeletPrincipalId string = aks.properties.identityProfile.kubeletidentity.objectId

@description('Whether the GPU pool is declared.')
output gpuPoolEnabled bool = gpuPoolEnabled

@description('Whether the Spot pool is declared.')
output spotPoolEnabled bool = spotPoolEnabled
